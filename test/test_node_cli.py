"""The node started the README's way (`ar-refine node --ros-args ...`, `python -m ar_ros.ros.node`) and the
README's rclpy client example run against it, each in its own process."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")
pytest.importorskip("ar_ros.srv")

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parent.parent


def ar_refine() -> list:
    """The `ar-refine` command of the sourced environment (else the same CLI through python -m ar_ros)."""
    exe = shutil.which("ar-refine")
    return [exe] if exe else [sys.executable, "-m", "ar_ros"]


def readme_client() -> str:
    """The README's rclpy client example: the python block that starts with `# talk_to_the_node.py`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = [b for b in blocks if b.startswith("# talk_to_the_node.py")]
    assert len(code) == 1
    return code[0]


def stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def test_the_readme_client_gets_a_refined_box_from_the_node_started_with_ar_refine_node(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "node.log", "w+")
    node = subprocess.Popen([*ar_refine(), "node", "--ros-args", "-p", "device:=cpu", "-p", "threads:=1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        script = tmp_path / "talk_to_the_node.py"
        script.write_text(readme_client())
        client = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                                env=env)
        log.seek(0)
        assert client.returncode == 0, client.stderr + log.read()
        m = re.search(r"refined: centre ([\d.]+), ([\d.]+) size ([\d.]+) x ([\d.]+)", client.stdout)
        assert m, client.stdout
        cx, cy, w, h = map(float, m.groups())
        # the white target spans x 100..220, y 80..160; the base box was 20% too large, off centre
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        inter = max(0.0, min(x2, 220) - max(x1, 100)) * max(0.0, min(y2, 160) - max(y1, 80))
        assert inter / (w * h + 120 * 80 - inter) > 0.7, (cx, cy, w, h)
    finally:
        assert stop(node) == 0
        log.close()


@pytest.mark.parametrize("command", [["ar-refine", "node"], ["python", "-m", "ar_ros.ros.node"]])
def test_a_rejected_parameter_is_one_line_and_exit_2(command):
    cmd = ar_refine() + ["node"] if command[0] == "ar-refine" else [sys.executable, "-m", "ar_ros.ros.node"]
    proc = subprocess.run([*cmd, "--ros-args", "-p", "max_targets:=0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ar_ros: invalid parameter: Parameter max_targets out of")


def test_arguments_outside_ros_args_are_refused_not_ignored():
    proc = subprocess.run([*ar_refine(), "base-tracker", "csrt"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ar-refine base-tracker: error: unexpected argument(s) ['csrt']: ROS arguments "
                                   "follow --ros-args (e.g. ar-refine base-tracker --ros-args -p device:=cpu -r "
                                   "image:=/camera/image_raw)")


def test_node_help_says_how_to_pass_ros_arguments():
    proc = subprocess.run([*ar_refine(), "node", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ar-refine node [--ros-args [-p NAME:=VALUE]")


def test_a_parameter_the_node_does_not_have_is_refused_not_dropped():
    proc = subprocess.run([*ar_refine(), "node", "--ros-args", "-p", "max_target:=4", "-p", "use_sim_time:=true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ar-refine node: error: no such parameter: max_target (the parameters: README, "
                                   "ar_ros/ros/params.py)")
