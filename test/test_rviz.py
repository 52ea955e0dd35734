"""The rviz config the launch files start rviz2 with: the topics of this launch, under its namespace."""
import ast
from pathlib import Path

import pytest
import yaml

from ar_ros.ros.rviz import DISPLAYS, resolve, rviz_config

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "rviz" / "ar_ros.rviz"


def topics(path):
    config = yaml.safe_load(Path(path).read_text())
    return {d["Name"]: d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"]}


def launch_default(launch_file, name):
    for node in ast.walk(ast.parse((ROOT / "launch" / launch_file).read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument" \
                and node.args and getattr(node.args[0], "value", None) == name:
            return next(k.value.value for k in node.keywords if k.arg == "default_value")
    raise AssertionError(f"{launch_file} declares no {name}")


def test_topics_follow_the_image_topic_and_namespace(tmp_path):
    got = topics(rviz_config(TEMPLATE, "/cam/color/image_raw", "robot", out=tmp_path / "a.rviz"))
    assert got == {"Camera": "/cam/color/image_raw", "Refined overlay": "/robot/refined/overlay",
                   "Refined mask": "/robot/refined/mask"}
    got = topics(rviz_config(TEMPLATE, "camera/image", "/robot/", out=tmp_path / "b.rviz"))
    assert got["Camera"] == "/robot/camera/image"  # a relative remap resolves in the node's namespace
    assert topics(rviz_config(TEMPLATE, "/image", "", out=tmp_path / "c.rviz"))["Refined overlay"] == "/refined/overlay"


def test_the_shipped_config_shows_the_launch_defaults():
    expected = {"Camera": launch_default("ar_ros.launch.py", "image_topic"),
                "Refined overlay": "/refined/overlay", "Refined mask": "/refined/mask"}
    assert {k: v for k, v in topics(TEMPLATE).items() if k in DISPLAYS} == expected


def test_no_launch_file_hands_rviz_the_file_as_it_is():
    for launch_file in sorted((ROOT / "launch").glob("*.launch.py")):
        for line in launch_file.read_text().splitlines():
            if "ar_ros.rviz" in line:
                assert "rviz_action(" in line, f"{launch_file.name}: {line.strip()}"


def test_a_template_without_the_displays_is_refused(tmp_path):
    bad = tmp_path / "bad.rviz"
    bad.write_text("Visualization Manager:\n  Displays: []\n")
    with pytest.raises(ValueError, match="Camera"):
        rviz_config(bad, "/image")


@pytest.mark.ros
def test_names_resolve_as_rclpy_resolves_them(ros_context):
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    node = Node("rviz_names", namespace="/robot/arm", context=ros_context)
    try:
        for name in ("refined/overlay", "/abs/image", "camera/image"):
            assert node.create_publisher(Image, name, 1).topic_name == resolve(name, "/robot/arm")
    finally:
        node.destroy_node()
