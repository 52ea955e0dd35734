"""Base trackers to refine: the paper's jittered ground truth, and real OpenCV trackers."""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

Box = Tuple[float, float, float, float]
OPENCV_TRACKERS = ("csrt", "kcf", "mil")
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


def create_opencv_tracker(kind: str):
    """A fresh OpenCV tracker (CSRT and KCF need opencv-contrib)."""
    kind = kind.lower()
    names = {"csrt": "TrackerCSRT_create", "kcf": "TrackerKCF_create", "mil": "TrackerMIL_create"}
    if kind not in names:
        raise ValueError(f"unknown OpenCV tracker {kind!r}; choose from {OPENCV_TRACKERS}")
    for module in (cv2, getattr(cv2, "legacy", None)):
        factory = getattr(module, names[kind], None) if module is not None else None
        if factory is not None:
            return factory()
    raise RuntimeError(f"OpenCV has no {names[kind]}: install opencv-contrib-python-headless")


class OpenCVTracker:
    """Stateful wrapper: ``init(frame, box)`` then ``update(frame) -> box or None`` (RGB frames)."""

    def __init__(self, kind: str = "csrt") -> None:
        self.kind = kind
        self._tracker = None
        self.last: Optional[Box] = None

    def init(self, rgb: np.ndarray, box: Box) -> None:
        self._tracker = create_opencv_tracker(self.kind)
        x, y, w, h = (int(round(v)) for v in box)
        self._tracker.init(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (x, y, max(w, 1), max(h, 1)))
        self.last = tuple(float(v) for v in box)  # type: ignore[assignment]

    def update(self, rgb: np.ndarray) -> Optional[Box]:
        if self._tracker is None:
            raise RuntimeError("call init() first")
        ok, box = self._tracker.update(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if ok and box[2] > 0 and box[3] > 0:
            self.last = tuple(float(v) for v in box)  # type: ignore[assignment]
            return self.last
        return None


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
