"""Helpers for tests with real rclpy nodes: spinning with timeouts and message builders."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Tuple

import numpy as np


def spin_until(executor, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)
    return bool(predicate())


def stamp(sec: int, nanosec: int = 0):
    from builtin_interfaces.msg import Time
    return Time(sec=sec, nanosec=nanosec)


def image_msg(rgb: np.ndarray, sec: int, nanosec: int = 0, encoding: str = "rgb8", frame_id: str = "cam"):
    from sensor_msgs.msg import Image
    from ar_ros.io.images import array_to_image
    arr = rgb[..., ::-1] if encoding == "bgr8" else rgb
    msg = array_to_image(np.ascontiguousarray(arr), encoding, Image)
    msg.header.stamp = stamp(sec, nanosec)
    msg.header.frame_id = frame_id
    return msg


def detections_msg(boxes: Iterable[Tuple[str, Tuple[float, float, float, float]]], sec: int, nanosec: int = 0,
                   frame_id: str = "cam", class_id: str = "thing"):
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    from ar_ros.io.detections import fill_bbox
    msg = Detection2DArray()
    msg.header.stamp = stamp(sec, nanosec)
    msg.header.frame_id = frame_id
    for tid, box in boxes:
        det = Detection2D(id=tid)
        det.header = msg.header
        fill_bbox(det.bbox, box)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = class_id
        hyp.hypothesis.score = 0.9
        det.results = [hyp]
        msg.detections.append(det)
    return msg


def bbox(box):
    from vision_msgs.msg import BoundingBox2D
    from ar_ros.io.detections import fill_bbox
    return fill_bbox(BoundingBox2D(), box)


def installed_executable(name: str) -> str:
    """Path of an ar_ros executable installed by colcon (lib/ar_ros/NAME); skips the test when not built."""
    import os
    from pathlib import Path
    import pytest
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        exe = Path(prefix) / "lib" / "ar_ros" / name
        if exe.is_file():
            return str(exe)
    pytest.skip(f"ar_ros is not installed (no lib/ar_ros/{name}; source tools/setup_env.sh)")
