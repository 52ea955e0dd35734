"""OPE metrics against hand-computed cases, and the `score` command-line contract."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ar_ros.eval import metrics as M
from ar_ros.data.results import read_boxes


def test_iou_and_centre_error_by_hand():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    pred = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [np.nan, 0, 1, 1]], float)
    assert M.ious(pred, gt) == pytest.approx([50 / 150, 1.0, 0.0], abs=1e-12)
    err = M.center_errors(pred, gt)
    assert err[0] == pytest.approx(5.0) and err[1] == 0.0 and math.isinf(err[2])
    nerr = M.center_errors(pred, gt, normalise=True)
    assert nerr[0] == pytest.approx(0.5)


def test_scores_by_hand():
    gt = np.array([[0, 0, 100, 100]] * 4 + [[0, 0, 0, 0]], float)
    # IoUs: 1.0, 0.81 (90x90 inside), 0.0 (far), 0.25 (half-shifted: 50*100/(2*10000-5000)=1/3)
    pred = np.array([[0, 0, 100, 100], [5, 5, 90, 90], [500, 500, 100, 100], [50, 0, 100, 100],
                     [1, 1, 1, 1]], float)
    s = M.score(pred, gt)
    iou = np.array([1.0, 0.81, 0.0, 1 / 3])
    expected_auc = np.mean([(iou > t).mean() for t in np.linspace(0, 1, 21)])
    assert s.auc == pytest.approx(expected_auc, abs=1e-6)
    # hand count: thresholds 0..1 step .05; IoU 1.0 passes 20 (not t=1), 0.81 passes 17, 1/3 passes 7
    assert s.auc == pytest.approx((20 + 17 + 0 + 7) / (4 * 21), abs=1e-6)
    assert s.precision == pytest.approx(0.5)            # centre errors 0, 0, 707, 50
    assert s.norm_precision == pytest.approx(0.5)       # 0, 0, 7.07, 0.5
    assert s.ao == pytest.approx(iou.mean(), abs=1e-9)
    assert s.sr50 == pytest.approx(0.5) and s.sr75 == pytest.approx(0.5)
    assert (s.frames, s.absent_frames) == (4, 1)


def test_nan_gt_is_absent_and_shape_mismatch_is_an_error():
    gt = np.array([[np.nan, np.nan, np.nan, np.nan], [0, 0, 10, 10]])
    s = M.score(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), gt)
    assert s.frames == 1 and s.auc == pytest.approx(20 / 21)
    with pytest.raises(ValueError, match="rows"):
        M.score(np.zeros((3, 4)), np.zeros((2, 4)))


def test_average_weighs_sequences_equally():
    a = M.score(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]]))
    b = M.score(np.array([[50, 50, 10, 10]] * 3), np.array([[0, 0, 10, 10]] * 3))
    avg = M.average([a, b])
    assert avg.ao == pytest.approx(0.5) and avg.frames == 4


def test_read_boxes_accepts_separators_and_rejects_garbage(tmp_path):
    f = tmp_path / "gt.txt"
    f.write_text("1,2,3,4\n5\t6\t7\t8\n\n9 10 11 12  # comment\n")
    assert read_boxes(f).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    f.write_text("1,2,3\n")
    with pytest.raises(ValueError, match=":1: expected 4 numbers"):
        read_boxes(f)


def test_score_command_json_contract(tmp_path):
    gt, pred = tmp_path / "gt.txt", tmp_path / "pred.txt"
    gt.write_text("0,0,100,100\n0,0,100,100\n")
    pred.write_text("0 0 100 100\n5\t5\t90\t90\n")
    out = subprocess.run([sys.executable, "-m", "ar_ros", "score", str(gt), str(pred), "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["auc"] == pytest.approx((20 + 17) / 42, abs=1e-6)
    assert data["precision"] == 1.0 and data["norm_precision"] == 1.0
    text = subprocess.run([sys.executable, "-m", "ar_ros", "score", str(gt), str(pred)],
                          capture_output=True, text=True, check=True).stdout
    assert "AUC" in text
    bad = subprocess.run([sys.executable, "-m", "ar_ros", "score", str(gt), str(tmp_path / "missing.txt")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.txt" in bad.stderr and "Traceback" not in bad.stderr
