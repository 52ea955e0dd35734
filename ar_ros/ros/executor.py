"""The executor the ar_ros executables spin.

rclpy's ``SingleThreadedExecutor`` rebuilds its wait set in Python on every ``spin_once``: with the
refiner node's 15 services (lifecycle, parameters, ours) that is about 0.45 ms per callback, paid for
every image and every detections message. rclpy's ``EventsExecutor`` (Jazzy and later, C++) dispatches
callbacks without that loop: node overhead at 640x480 was 3.2 ms with it and 5.7 ms without in two
consecutive runs of ``benchmarks/bench_node.py --executor events|single``. Humble has no EventsExecutor and gets the single-threaded one.
``AR_ROS_EXECUTOR=single`` forces the single-threaded executor anywhere.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from rclpy.executors import SingleThreadedExecutor


def make_executor(context: Optional[Any] = None):
    """An ``EventsExecutor`` where rclpy has one (unless ``AR_ROS_EXECUTOR=single``), else single-threaded."""
    if os.environ.get("AR_ROS_EXECUTOR", "events") != "single":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # Humble
            pass
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)
