"""What a robot user gets from `colcon build` + rosdep: the ar-refine program, dependencies, licence."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ros_helpers import installed_executable

ROOT = Path(__file__).resolve().parents[1]


def test_ar_refine_is_installed_for_ros2_run_and_on_path():
    exe = installed_executable("ar-refine")  # lib/ar_ros/ar-refine: `ros2 run ar_ros ar-refine`
    on_path = Path(exe).parents[2] / "bin" / "ar-refine"  # <prefix>/bin, which install/setup.bash puts on PATH
    assert on_path.is_file() and os.access(on_path, os.X_OK)
    for program in (exe, str(on_path)):
        run = subprocess.run([program, "info", "--json"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["config"]["input_size"] > 0


def test_package_xml_has_what_replay_and_eval_need_and_a_real_maintainer_placeholder():
    xml = (ROOT / "package.xml").read_text()
    assert "<exec_depend>python3-matplotlib</exec_depend>" in xml  # the rosdep key (rosdistro python.yaml)
    assert re.search(r"rosbags.*pip|pip.*rosbags", xml, re.S)       # no rosdep key: the pip note
    email = re.search(r'<maintainer email="([^"]+)"', xml).group(1)
    assert "example.com" not in email and "@" in email


def test_licence_file_is_the_one_package_xml_names():
    assert "<license>Apache-2.0</license>" in (ROOT / "package.xml").read_text()
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


@pytest.mark.parametrize("name", ["ar_ros", "base_tracker", "ar-refine"])
def test_cmake_installs_each_program(name):
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f"scripts/{name}" in cmake and os.access(ROOT / "scripts" / name, os.X_OK)
