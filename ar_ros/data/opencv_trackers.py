"""OpenCV single-object trackers (CSRT, KCF, MIL) behind one small interface, used as base trackers."""
from __future__ import annotations

from typing import Any, Optional, Tuple, cast

import cv2
import numpy as np

Box = Tuple[float, float, float, float]
OPENCV_TRACKERS = ("csrt", "kcf", "mil")


def create_opencv_tracker(kind: str) -> Any:
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


MIN_SIDE = 8  # px: OpenCV's trackers fail on (or assert over) a box of a pixel or two


def _inside(start: float, length: float, size: int) -> Tuple[int, int]:
    """Integer (start, length) of a box side, as OpenCV takes it (rounded, at least 1 px), cut to
    [0, size); a side that had to be cut and comes out under MIN_SIDE (or lay wholly outside) becomes
    MIN_SIDE long around its centre, kept inside. A side inside the frame is only rounded."""
    a = int(round(start))
    b = a + max(int(round(length)), 1)
    if a >= 0 and b <= size:
        return a, b - a
    lo, hi = max(a, 0), min(b, size)
    side = min(MIN_SIDE, size)
    if hi - lo >= side:
        return lo, hi - lo
    centre = min(max((lo + hi) / 2 if hi > lo else (a + b) / 2, 0.0), float(size))
    lo = min(max(int(round(centre - side / 2)), 0), size - side)
    return lo, side


class OpenCVTracker:
    """Stateful wrapper: ``init(frame, box)`` then ``update(frame) -> box or None`` (RGB frames)."""

    def __init__(self, kind: str = "csrt") -> None:
        self.kind = kind
        self._tracker: Any = None  # an OpenCV tracker (cv2 has no type hints); None before init()
        self.last: Optional[Box] = None
        self.reseeds = 0  # times reseed() re-initialised the tracker
        self.failed_reseeds = 0  # boxes OpenCV refused to start on (the tracker went on unchanged)

    def init(self, rgb: np.ndarray, box: Box) -> None:
        """Start on ``box``; the part of it outside the frame is cut off (OpenCV asserts on it: a refined
        box fed back in closed loop may hang over the image edge)."""
        self._tracker = create_opencv_tracker(self.kind)
        x, y, w, h = (float(v) for v in box)
        x1, width = _inside(x, w, rgb.shape[1])
        y1, height = _inside(y, h, rgb.shape[0])
        self._tracker.init(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (x1, y1, width, height))
        self.last = (x, y, w, h)

    def reseed(self, rgb: np.ndarray, box: Box) -> bool:
        """The closed loop: the next :meth:`update` starts from ``box`` on ``rgb`` (e.g. the refined box).

        OpenCV trackers have no way to move their state, so this re-initialises the tracker there. A box
        within 1e-3 px of the one it reported itself (e.g. a refinement that fell back to the base box)
        changes nothing and keeps the learned model, and so does a box OpenCV refuses to start on
        (counted in ``failed_reseeds``); returns whether the tracker was re-initialised.
        """
        if self._tracker is None:
            raise RuntimeError("call init() first")
        if self.last is not None and np.allclose(self.last, box, rtol=0.0, atol=1e-3):
            return False
        tracker, last = self._tracker, self.last
        try:
            self.init(rgb, box)
        except cv2.error:  # e.g. CSRT on a sliver along the whole frame: keep tracking from its own state
            self._tracker, self.last = tracker, last
            self.failed_reseeds += 1
            return False
        self.reseeds += 1
        return True

    def update(self, rgb: np.ndarray) -> Optional[Box]:
        if self._tracker is None:
            raise RuntimeError("call init() first")
        ok, box = self._tracker.update(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if ok and box[2] > 0 and box[3] > 0:
            self.last = cast(Box, tuple(float(v) for v in box))  # OpenCV's (x, y, w, h)
            return self.last
        return None
