"""Box conventions in one place.

Boxes are ``(x, y, w, h)`` in continuous frame pixels: (x, y) is the top-left *edge* of the box, so a
box covering pixel columns 0..9 is ``(0, 0, 10, h)``. ``xyxy`` means ``(x1, y1, x2, y2)`` with the same
convention. ROS BoundingBox2D uses the centre; conversions to it live with the ROS code.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple, Union

import numpy as np

Box = Tuple[float, float, float, float]
MAX_BOX_SCALE = 4.0  # a box wider / taller than this many frames is no box of that frame (e.g. w = 2e300)


def as_box(box: Iterable[float]) -> Box:
    """Convert any 4-sequence to a tuple of floats, or raise ``ValueError`` saying why it is not a box."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (x, y, w, h), got {box!r}") from None
    if len(values) != 4:
        raise ValueError(f"box must be 4 numbers (x, y, w, h), got {len(values)}")
    return values


def box_problem(box: Sequence[float], width: int, height: int) -> str:
    """Return why ``box`` cannot be refined in a ``width`` x ``height`` frame, or ``""`` if it can."""
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box):
        return f"box has NaN or inf: {tuple(box)}"
    if w <= 0 or h <= 0:
        return f"box has zero or negative size: w={w:g} h={h:g}"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return f"box {tuple(round(v, 1) for v in box)} lies outside the {width}x{height} frame"
    if w > MAX_BOX_SCALE * width or h > MAX_BOX_SCALE * height:
        return f"box size {w:g}x{h:g} is more than {MAX_BOX_SCALE:g} times the {width}x{height} frame"
    return ""


def check_box(box: Iterable[float], width: int, height: int) -> Box:
    """``as_box`` + ``box_problem``: a usable box or a ``ValueError``."""
    b = as_box(box)
    problem = box_problem(b, width, height)
    if problem:
        raise ValueError(problem)
    return b


def xywh_to_xyxy(box: Sequence[float]) -> Box:
    x, y, w, h = box
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box: Union[Sequence[float], np.ndarray]) -> Box:
    x1, y1, x2, y2 = box
    return (x1, y1, x2 - x1, y2 - y1)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xywh boxes (0 when either is empty)."""
    ax1, ay1, ax2, ay2 = xywh_to_xyxy(a)
    bx1, by1, bx2, by2 = xywh_to_xyxy(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(a[2], 0) * max(a[3], 0) + max(b[2], 0) * max(b[3], 0) - inter
    return inter / union if union > 0 else 0.0


def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N,4) xywh arrays -> (N,)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = np.clip(a[:, 2], 0, None) * np.clip(a[:, 3], 0, None) + \
        np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_box(box: Sequence[float], width: int, height: int, min_size: float = 0.0) -> Box:
    """Clip an xywh box to the frame, keeping at least ``min_size`` per side (authors' ``bbox_clip``)."""
    x1, y1, x2, y2 = xywh_to_xyxy(box)
    x1 = min(max(x1, 0.0), width - min_size)
    y1 = min(max(y1, 0.0), height - min_size)
    x2 = max(min(x2, float(width)), min_size)
    y2 = max(min(y2, float(height)), min_size)
    return (x1, y1, max(x2 - x1, min_size), max(y2 - y1, min_size))
