"""tools/spearman_ceiling.py: the noise model on hand-made boxes, and the one-line skip without the video."""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("spearman_ceiling", ROOT / "tools" / "spearman_ceiling.py")
ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ceiling)


def test_the_stored_box_noise_comes_from_the_methods_disagreement():
    # two methods with N(0, s) side errors differ by 2 s / sqrt(pi) on average; their mean is off by s / sqrt 2
    side_mean = 1.036  # eval/pets09_s2l1_gt.json stats
    assert ceiling.stored_box_noise() == pytest.approx(side_mean * math.sqrt(math.pi) / 2 / math.sqrt(2))
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.9, 200_000), rng.normal(0, 0.9, 200_000)
    assert np.abs(a - b).mean() * math.sqrt(math.pi) / 2 == pytest.approx(0.9, rel=0.01)


def test_perturbed_moves_every_side_by_the_noise():
    boxes = np.tile([[10.0, 20.0, 30.0, 60.0]], (50_000, 1))
    assert np.array_equal(ceiling.perturbed(boxes, 0.0, np.random.default_rng(0)), boxes)
    moved = ceiling.perturbed(boxes, 2.0, np.random.default_rng(0))
    right, bottom = moved[:, 0] + moved[:, 2], moved[:, 1] + moved[:, 3]
    for side, where in ((moved[:, 0], 10), (moved[:, 1], 20), (right, 40), (bottom, 80)):
        assert side.mean() == pytest.approx(where, abs=0.05) and side.std() == pytest.approx(2.0, rel=0.02)


def test_without_the_real_video_it_says_so_and_exits_77(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "spearman_ceiling.py")], capture_output=True,
                          text=True, env={**os.environ, "AR_ROS_DATA": str(tmp_path)}, timeout=120)
    assert proc.returncode == 77 and proc.stdout.startswith("skipped:") and "data fetch" in proc.stdout


@pytest.mark.parametrize("args", [["--side-noise", "-1"], ["--draws", "0"], ["--base", "nope"]])
def test_bad_arguments_are_a_usage_error(args):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "spearman_ceiling.py"), *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr
