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


# --- real-photo composites (issue 14 item 4), on photos drawn here: CI has no real data ---

def _photo(seed: int, size=(200, 160)) -> np.ndarray:
    """A 'photo' with one clear object: a saturated ellipse over a grey textured background."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(110, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    import cv2
    colour = tuple(int(c) for c in rng.integers(0, 256, 3)) if seed % 2 else (230, 40, 30)
    cv2.ellipse(img, (size[0] // 2, size[1] // 2), (size[0] // 6, size[1] // 4), 0, 0, 360, colour, -1)
    return img


def _fake_real_data(root):
    """A fetched-data folder (MANIFEST.json + photos) in the layout ar_ros.data.real_data reads."""
    import cv2
    files = {}
    for i in range(5):  # four to train on, one held out
        rel = f"photos/test/photo{i:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), cv2.cvtColor(_photo(i), cv2.COLOR_RGB2BGR))
        files[rel] = {"use": "training"}
    (root / "MANIFEST.json").write_text(json.dumps({"sources": {"test": {"license": "drawn by the test",
                                                                          "files": files}}}))
    return root


def test_grabcut_cuts_out_the_clear_object_of_a_photo():
    from ar_ros.train.composite import cutouts_from_photo
    img = _photo(0)
    cuts = cutouts_from_photo(img, "p.png", tries=1)
    assert len(cuts) == 1
    h, w = cuts[0].alpha.shape  # the ellipse's box: 2 x 33 by 2 x 40 px, centred
    assert abs(w - 2 * (200 // 6)) <= 4 and abs(h - 2 * (160 // 4)) <= 4
    assert 0.7 < float((cuts[0].alpha > 0.5).mean()) < 0.85  # an ellipse fills pi/4 of its box


def test_tracker_pairs_on_composites_take_the_trackers_box_as_the_base_box(tmp_path):
    import cv2
    from ar_ros.data.base_trackers import run_opencv
    from ar_ros.train.composite import CompositeSequence, PhotoBank, composite_tracker_pairs
    paths = [tmp_path / f"p{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        cv2.imwrite(str(path), cv2.cvtColor(_photo(i), cv2.COLOR_RGB2BGR))
    bank = PhotoBank(paths)
    source = composite_tracker_pairs("kcf", bank, (100, 101), length=12, size=(160, 120), n_sequences=1, max_gap=3)
    _, search = source(np.random.default_rng(0))
    seq = CompositeSequence(100, bank, 12, (160, 120))
    boxes = run_opencv((seq[t].image for t in range(12)), seq[0].box, "kcf")
    frame = next(t for t in range(12) if np.array_equal(seq[t].image, search.image))
    assert search.box == seq[frame].box and search.base == tuple(boxes[frame])
    assert search.base != search.box  # a tracker's box, not the ground truth


def test_pasted_cutout_gives_exact_box_and_mask_by_construction():
    from ar_ros.train.composite import Cutout, _paste
    from ar_ros.data.synthetic import mask_box
    cut = Cutout(np.full((20, 10, 3), 200, np.uint8), np.ones((20, 10), np.float32), "block")
    for rot, (w, h) in ((0.0, (30, 50)), (np.pi / 2, (50, 30))):
        canvas = np.zeros((120, 160, 3), np.uint8)
        mask = np.zeros((120, 160), np.float32)
        _paste(canvas, cut, 80.0, 60.0, 15.0, 25.0, rot, mask)
        x, y, bw, bh = mask_box(mask)
        assert abs(bw - w) <= 1 and abs(bh - h) <= 1 and abs(x + bw / 2 - 80) <= 1 and abs(y + bh / 2 - 60) <= 1
        assert (canvas[mask > 0.99] == 200).all() and (canvas[mask == 0] == 0).all()


def test_photos_split_by_file_and_scene_names_group_repeated_shots():
    from pathlib import Path
    from ar_ros.train.composite import scene_name, split_photos
    photos = [Path(f"p{i}.jpg") for i in range(12)]
    train_photos, val_photos = split_photos(photos)
    assert len(val_photos) == 2 and not set(train_photos) & set(val_photos)
    assert sorted(train_photos + val_photos) == sorted(photos)
    assert scene_name("left01.jpg") == scene_name("right14.jpg") == scene_name("left.jpg")
    assert scene_name("aloeL.jpg") == scene_name("aloeR.jpg") != scene_name("apple.jpg")


def test_training_on_real_photo_composites_with_a_new_backbone(tmp_path, monkeypatch):
    from ar_ros.model import save_checkpoint
    monkeypatch.setenv("AR_ROS_DATA", str(_fake_real_data(tmp_path / "data")))
    start = save_checkpoint(tmp_path / "start.pt", AlphaRefineNet(NetConfig(depth=18, input_size=64,
                                                                            with_top=False, crop_mode="clean")))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=1, data=["synthetic", "real"], backbone="mobilenet_v2",
                      init_from=str(start), freeze="layer1", small_jitter_prob=0.5, backbone_lr_scale=0.1,
                      **{**TINY, "depth": 0})
    assert train(cfg, progress=False).exists()
    _, config, meta = load_checkpoint(tmp_path / "run" / "best.pt")
    assert config.backbone == "mobilenet_v2" and "real-photo composites" in meta["data"]
    record = meta["history"][-1]
    assert {"val_iou", "val_iou_real", "val_iou_small", "val_score"} <= set(record)
    assert record["base_iou_small"] > record["base_iou_real"]  # nearly right boxes: the "do no harm" set
    assert (tmp_path / "run" / "cutouts_train.pkl").exists()  # a resumed run skips GrabCut
    torch.manual_seed(cfg.seed)  # the trainer's initial network, before training
    before = AlphaRefineNet(config).state_dict()
    state, _, _ = load_checkpoint(tmp_path / "run" / "last.pt")
    for key in ("feature_extractor.features.0.0.weight", "feature_extractor.features.3.conv.1.running_mean"):
        assert torch.equal(state[key], before[key]), key  # frozen: weights and BatchNorm statistics
    trained = "feature_extractor.features.4.conv.0.weight"
    assert not torch.equal(state[trained], before[trained])


def test_real_data_missing_is_a_clear_error(tmp_path, monkeypatch):
    from ar_ros.data.real_data import RealDataMissing
    monkeypatch.setenv("AR_ROS_DATA", str(tmp_path / "nothing"))
    with pytest.raises(RealDataMissing, match="data fetch"):
        train(TrainConfig(out_dir=str(tmp_path / "run"), epochs=1, data=["real"], **TINY), progress=False)


def test_fine_tuning_a_whole_refiner_into_a_stride_8_corner_head(tmp_path):
    """--init-from with --init-backbone copies the backbone too; the stride-8 parts start from zero."""
    from ar_ros.model import save_checkpoint
    torch.manual_seed(1)
    source = AlphaRefineNet(NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean"))
    save_checkpoint(tmp_path / "coarse.pt", source)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=1, init_from=str(tmp_path / "coarse.pt"),
                      init_backbone=True, corner_stride=8, freeze="layer2", **TINY)
    state, config, _ = load_checkpoint(train(cfg, progress=False))
    assert config.corner_stride == 8 and "corner_head.fine_tl.out.weight" in state
    want = source.state_dict()
    for key in ("feature_extractor.conv1.weight", "feature_extractor.layer2.0.conv1.weight"):  # frozen: as copied
        assert torch.allclose(state[key].float(), want[key], atol=1e-3), key
    assert not torch.equal(state["corner_head.fine_tl.out.weight"].float(), torch.zeros(1, 32, 1, 1))  # trained
