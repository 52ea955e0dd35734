"""The shipped default model: loads from the package, and really refines jittered boxes."""
import json
import subprocess
import sys

import numpy as np

from ar_ros import Refiner
from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.data.base_trackers import jitter
from ar_ros.eval.metrics import ious
from ar_ros.data.synthetic import Sequence
from ar_ros.model import load_checkpoint


def test_default_checkpoint_is_small_and_documented():
    assert DEFAULT_CHECKPOINT.is_file()
    assert DEFAULT_CHECKPOINT.stat().st_size < 25e6
    state, config, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    assert config.crop_mode == "clean" and not config.with_top
    assert meta["data"].startswith("synthetic") and meta["history"]
    # the slim mask decoder, so box_mode "auto" (the default) fuses corners and mask (README, model card)
    assert config.mask_head == "slim" and config.corner_stride == 8
    assert Refiner().resolved_box_mode() == "fused"
    assert "ImageNet backbone weights" in meta["licenses"]


def test_default_model_moves_jittered_boxes_toward_the_ground_truth():
    refiner = Refiner()  # checkpoint=None -> the shipped default
    rng = np.random.default_rng(7)
    base_iou, refined_iou = [], []
    for seed in (100_010, 100_011, 100_012):  # held-out seeds (training draws from 0..90000)
        seq = Sequence(seed, 40, (640, 480))
        first = seq[0]
        refiner.clear()
        refiner.set_target(first.image, first.box, "t")
        for t in (10, 20, 30):
            frame = seq[t]
            base = jitter(frame.box, rng)
            res = refiner.refine(frame.image, {"t": base})["t"]
            base_iou.append(ious(np.array([base]), np.array([frame.box]))[0])
            refined_iou.append(ious(np.array([res.box]), np.array([frame.box]))[0])
    assert np.mean(refined_iou) > np.mean(base_iou) + 0.03, (np.mean(base_iou), np.mean(refined_iou))


def test_demo_runs_end_to_end_on_a_tiny_sequence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ar_ros", "demo", "--out", str(tmp_path), "--frames", "8",
                           "--base", "kcf", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "refined" in proc.stdout and "gain" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["results"]) == {"jitter", "kcf", "kcf_closed"}  # the paper's closed loop too
    for name in ("success_jitter.png", "iou_kcf.png", "overlay_jitter.mp4", "refined_kcf.bag"):
        assert (tmp_path / name).exists(), name
