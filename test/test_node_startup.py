"""How the installed executables fail at start: the exit status launch respawn and systemd see, one line why."""
import os
import subprocess

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from ros_helpers import installed_executable  # noqa: E402

pytestmark = pytest.mark.ros


def start(name, *params, timeout=120):
    cmd = [installed_executable(name), "--ros-args", *sum((["-p", p] for p in params), [])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.parametrize("name, param, says", [
    ("ar_ros", "max_targets:=0", "max_targets out of range"),          # rclpy's range check (descriptor)
    ("ar_ros", "max_targets:=many", "max_targets"),                    # rclpy's type check
    ("ar_ros", "mode:=foo", "mode must be one of"),                    # ours (params.validate)
    ("ar_ros", "device:=gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("base_tracker", "tracker:=5", "tracker"),
])
def test_a_rejected_parameter_is_one_line_and_exit_2(name, param, says):
    run = start(name, param)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}: ") and says in lines[0], run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_a_model_that_does_not_load_exits_1(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    run = start("ar_ros", f"checkpoint:={bad}", "device:=cpu")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "cannot load the refiner" in run.stderr and str(bad) in run.stderr, run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_cuda_requested_without_cuda_exits_1():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = start("ar_ros", "device:=cuda")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "CUDA is not available" in run.stderr and "Traceback" not in run.stderr, run.stderr
