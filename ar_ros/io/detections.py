"""vision_msgs Detection2D / BoundingBox2D <-> (x, y, w, h) boxes (vision_msgs 4.x layout)."""
from __future__ import annotations

from typing import Any, Tuple

Box = Tuple[float, float, float, float]


def bbox_to_xywh(bbox: Any) -> Box:
    """BoundingBox2D (centre + full size) -> top-left x, y, w, h."""
    cx, cy = float(bbox.center.position.x), float(bbox.center.position.y)
    w, h = float(bbox.size_x), float(bbox.size_y)
    return (cx - w / 2.0, cy - h / 2.0, w, h)


def fill_bbox(bbox: Any, box: Box) -> Any:
    """Write an x, y, w, h box into a BoundingBox2D in place (theta 0: axis-aligned); returns it."""
    x, y, w, h = (float(v) for v in box)
    bbox.center.position.x = x + w / 2.0
    bbox.center.position.y = y + h / 2.0
    bbox.center.theta = 0.0
    bbox.size_x = w
    bbox.size_y = h
    return bbox


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
