"""Training: the loss goes down, resume continues the schedule, DDP with 2 gloo processes runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ar_ros.model import AlphaRefineNet, NetConfig, load_checkpoint
from ar_ros.train.losses import box_iou_xyxy, refine_loss
from ar_ros.train.sampler import PairSampler, SamplerConfig, synthetic_pairs
from ar_ros.train.trainer import TrainConfig, train

TINY = dict(depth=18, input_size=64, batch_size=4, iters_per_epoch=2, val_batches=1, frame_size=[160, 120])


def test_sampler_targets_lie_in_the_crop_and_match_the_jitter():
    sampler = PairSampler(synthetic_pairs(size=(160, 120)), SamplerConfig(input_size=64))
    batch = sampler.batch(np.random.default_rng(0), 6)
    assert batch["template"].shape == (6, 3, 64, 64) and batch["mask"].shape == (6, 1, 64, 64)
    t = batch["target"]
    assert (t >= 0).all() and (t <= 64).all() and (t[:, 2] > t[:, 0]).all()
    # jitter is moderate: the base box overlaps the target in every sample
    assert (box_iou_xyxy(batch["base"], t) > 0.1).all()


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    net = AlphaRefineNet(NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean"))
    sampler = PairSampler(synthetic_pairs(size=(160, 120)), SamplerConfig(input_size=64))
    batch = sampler.batch(np.random.default_rng(1), 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, parts = refine_loss(net(batch["template"], batch["search"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["total"])
    assert losses[-1] < 0.7 * losses[0], losses


def test_resume_continues_the_same_schedule(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), epochs=1, lr_step=1, **TINY)
    train(cfg, progress=False)
    train(TrainConfig(out_dir=str(tmp_path), epochs=2, lr_step=1, **TINY), progress=False)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["train_state"]["epoch"] == 2
    history = raw["meta"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["lr"] == pytest.approx(5e-4) and history[1]["lr"] == pytest.approx(2.5e-4)
    assert "val_iou" in history[1]
    state, config, meta = load_checkpoint(tmp_path / "final.pt")
    assert config.input_size == 64 and meta["data"].startswith("synthetic")
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


@pytest.mark.slow
def test_ddp_two_gloo_processes_run_a_step(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "-m", "ar_ros", "train", "--out", str(tmp_path), "--epochs", "1", "--iters", "1", "--batch-size", "2",
           "--input-size", "64", "--threads", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "final.pt").exists()
    assert json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[0])["epoch"] == 1


def test_training_on_a_dataset_folder(tmp_path):
    from test_datasets import _youtube_vos
    root = _youtube_vos(tmp_path / "yvos")
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=1, data=[f"youtube_vos:{root}", "synthetic"], **TINY)
    assert train(cfg, progress=False).exists()
    with pytest.raises(ValueError, match="DATASET|<dataset>"):
        train(TrainConfig(out_dir=str(tmp_path / "bad"), epochs=1, data=["nonsense"], **TINY), progress=False)
