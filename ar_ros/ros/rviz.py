"""The rviz config of a running refiner: its camera, overlay and mask topics, wherever they were remapped.

``rviz/ar_ros.rviz`` is a plain rviz config (valid on its own, with the launch defaults); the launch
files do not hand it to rviz as it is but through :func:`rviz_config`, which sets each image display's
topic from the launch arguments (image topic, namespace) at launch time. Only :func:`rviz_action`
imports ``launch``; the rest is plain Python and YAML.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

# display name in rviz/ar_ros.rviz -> the node's topic it shows (None: the camera, as remapped)
DISPLAYS: Dict[str, Optional[str]] = {"Camera": None, "Refined overlay": "refined/overlay",
                                      "Refined mask": "refined/mask"}


def resolve(name: str, namespace: str = "") -> str:
    """A topic name as a node in ``namespace`` resolves it: absolute names stay, relative ones go under it."""
    if name.startswith("/"):
        return name
    ns = namespace.strip("/")
    return f"/{ns}/{name}" if ns else f"/{name}"


def rviz_config(template: Union[str, Path], image_topic: str, namespace: str = "",
                out: Union[str, Path, None] = None) -> Path:
    """Write ``template`` with the topics of a refiner in ``namespace`` whose ``image`` is ``image_topic``.

    ``out`` defaults to a new file in the temporary folder. Raises ValueError when the template lacks one
    of the displays in ``DISPLAYS``.
    """
    config = yaml.safe_load(Path(template).read_text())
    topics = {name: resolve(topic or image_topic, namespace) for name, topic in DISPLAYS.items()}
    seen = set()
    for display in config.get("Visualization Manager", {}).get("Displays", []):
        name = display.get("Name")
        if name in topics:
            display.setdefault("Topic", {})["Value"] = topics[name]
            seen.add(name)
    missing = sorted(set(topics) - seen)
    if missing:
        raise ValueError(f"{template}: no rviz display named {missing}")
    if out is None:
        fd, out = tempfile.mkstemp(prefix="ar_ros_", suffix=".rviz")
        os.close(fd)
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(out)


def rviz_action(template: str, image_topic: Any, namespace: Any = "", use_sim_time: Any = False,
                condition: Any = None):
    """A launch action starting rviz2 on :func:`rviz_config` of the launch arguments (substitutions or strings)."""
    from launch.actions import OpaqueFunction
    from launch_ros.actions import Node

    def start(context):
        def value(v: Any) -> str:
            return v.perform(context) if hasattr(v, "perform") else str(v)
        path = rviz_config(template, value(image_topic), value(namespace))
        return [Node(package="rviz2", executable="rviz2", name="rviz2", output="log", arguments=["-d", str(path)],
                     parameters=[{"use_sim_time": use_sim_time}])]
    return OpaqueFunction(function=start, condition=condition)
