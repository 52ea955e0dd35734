"""Base trackers to refine in evaluation: the paper's jittered ground truth, and real OpenCV trackers."""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..opencv_trackers import OPENCV_TRACKERS, OpenCVTracker

Box = Tuple[float, float, float, float]
BASES = ("jitter",) + OPENCV_TRACKERS


def jitter(box: Box, rng: np.random.Generator, scale: float = 0.25, center: float = 0.25) -> Box:
    """The authors' training jitter used as a synthetic coarse tracker: log-normal size change, then a
    centre shift of up to ``center`` x sqrt(w'h')/2 per axis."""
    x, y, w, h = box
    w2, h2 = w * math.exp(rng.normal() * scale), h * math.exp(rng.normal() * scale)
    r = math.sqrt(w2 * h2) * center
    cx = x + w / 2 + r * (rng.random() - 0.5)
    cy = y + h / 2 + r * (rng.random() - 0.5)
    return (cx - w2 / 2, cy - h2 / 2, w2, h2)


def jittered_gt(gt: Sequence[Box], seed: int, scale: float = 0.25, center: float = 0.25) -> List[Optional[Box]]:
    """Frame 0 keeps the GT (the init box); later frames are jittered; absent GT stays absent (None)."""
    rng = np.random.default_rng(seed)
    out: List[Optional[Box]] = []
    for i, box in enumerate(gt):
        present = box is not None and box[2] > 0 and box[3] > 0
        out.append(None if not present else tuple(box) if i == 0 else jitter(box, rng, scale, center))
    return out


def run_opencv(frames: Iterable[np.ndarray], init_box: Box, kind: str = "csrt") -> List[Optional[Box]]:
    """Track through ``frames`` from ``init_box``; a lost frame repeats the last box (as trackers report)."""
    tracker = OpenCVTracker(kind)
    out: List[Optional[Box]] = []
    for i, rgb in enumerate(frames):
        if i == 0:
            tracker.init(rgb, init_box)
            out.append(tuple(init_box))
        else:
            box = tracker.update(rgb)
            out.append(box if box is not None else tracker.last)
    return out
