"""tools/gpu_check.sh --dry-run as the bare GPU machine would run it: no ROS, nothing on PYTHONPATH but the
tree, this Python as PY. Its last line is one JSON object with every check, parity figure and median."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def clean_env(out: Path) -> dict:
    """No ROS, no venv activation, no PYTHONPATH: only what a bare machine has, plus PY and OUT."""
    env = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", PY=sys.executable, OUT=str(out))
    return env


def test_dry_run_checks_everything_on_cpu_and_ends_with_one_json_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path,
                          env=clean_env(tmp_path / "out"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"ok", "dry_run", "env", "checks", "parity", "median_ms", "goals"} <= set(summary)
    assert summary["ok"] is True and summary["dry_run"] is True and summary["device"] == "cpu"
    assert summary["env"]["torch"] and summary["env"]["numpy"] and "onnxruntime_providers" in summary["env"]
    checks = summary["checks"]
    skipped = "skipped: dry run (CPU)" if torch.cuda.is_available() else "skipped: no CUDA"
    for name in ("cuda_fp32_vs_cpu_fp32", "cuda_graphs_vs_eager"):
        for model in ("shipped", "authors"):
            assert checks[f"{name}/{model}"] == skipped
    # every skip says why: no CUDA, no CUDA provider, no tensorrt ...
    assert all(v.startswith("skipped: ") and len(v) > len("skipped: ") + 5 for v in checks.values()
               if v.startswith("skipped"))
    assert checks["onnxruntime_cuda_vs_torch/shipped"].startswith("skipped: ")
    assert checks["tensorrt"].startswith("skipped: ")
    assert checks["pytest_cuda"].startswith("ok: ") and "passed" in checks["pytest_cuda"]
    # what runs on CPU really ran, within the tolerance stated in the results file
    full = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    parity, tolerances = summary["parity"], full["tolerances"]
    for mode in ("exact", "clean"):  # the device crops' code, on CPU: within the stated tolerance
        assert checks[f"device_crops_vs_opencv/{mode}"] == "ok"
        assert parity[f"device_crops_vs_opencv/{mode}/max_levels"] <= 1
    # fp16 of the shipped model runs on CPU (the GPU's layer choice): within 0.3 px of fp32, all finite
    assert checks["fp16_vs_fp32/shipped"] == "ok"
    assert 0.0 <= parity["fp16_vs_fp32/shipped/box_px"] <= tolerances["fp16_vs_fp32/shipped/box_px"] == 0.3
    assert parity["fp16_vs_fp32/shipped/nonfinite"] == 0
    # the random-weight layout, its BatchNorms calibrated: no fp16 overflow to NaN
    assert checks["fp16_vs_fp32/authors"] == "ok" and parity["fp16_vs_fp32/authors/nonfinite"] == 0
    for model in ("shipped", "authors"):
        assert checks[f"batch_vs_single/{model}/cpu/fp32"] == "ok"
        assert checks[f"refine_many_vs_refine/{model}/cpu"] == "ok"
        for fig in ("box_px", "score", "mask"):
            for n in (1, 2):
                key = f"batch_vs_single/{model}/cpu/fp32/{fig}/{n}"
                assert 0.0 <= parity[key] <= tolerances[key] <= 0.01
            key = f"refine_many_vs_refine/{model}/cpu/{fig}"
            assert 0.0 <= parity[key] <= tolerances[key] <= 0.01
    if summary["env"]["onnxruntime"]:  # the node's defaults with backend onnxruntime: run, finite
        assert checks["onnxruntime_auto/shipped"] == "ok" and summary["env"]["onnxruntime_auto"]["precision"] == "fp32"
    medians = summary["median_ms"]
    for model in ("shipped", "authors"):
        for kind in ("box", "box+mask"):
            for n in (1, 2):
                assert math.isfinite(medians[f"{model}/cpu-fp32/{kind}/{n}"]) and medians[f"{model}/cpu-fp32/{kind}/{n}"] > 0
    assert full["benchmarks"].keys() == medians.keys()
    assert (tmp_path / "out" / "gpu_check.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, this is the full GPU run")
def test_without_cuda_and_without_dry_run_it_says_so_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], cwd=tmp_path,
                          env=clean_env(tmp_path / "out"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("gpu_check: no CUDA device")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is False


def test_a_python_that_is_not_there_is_refused_before_anything_runs(tmp_path):
    env = clean_env(tmp_path / "out")
    env["PY"] = "/nonexistent/python3"
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a Python on this machine" in proc.stderr
