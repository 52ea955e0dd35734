"""Base trackers to refine in evaluation: the paper's jittered ground truth, the ground truth itself (the
oracle: a box that is already right, which refinement must not spoil), and real OpenCV trackers."""
from __future__ import annotations

import math
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, cast

import numpy as np

from ..engine.boxes import box_problem
from .opencv_trackers import OPENCV_TRACKERS, OpenCVTracker

Box = Tuple[float, float, float, float]
BASES = ("jitter", "oracle") + OPENCV_TRACKERS
# open: the base tracker never sees the refined box. closed (the paper's): each frame the refined box
# replaces the tracker's state, so its next update starts from it; only trackers with state can do it.
LOOPS = ("open", "closed")


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
        out.append(None if not present else cast(Box, tuple(box)) if i == 0 else jitter(box, rng, scale, center))
    return out


def oracle(gt: Sequence[Box]) -> List[Optional[Box]]:
    """The ground truth itself as the base box; absent GT (empty box) stays absent (None)."""
    return [cast(Box, tuple(box)) if box is not None and box[2] > 0 and box[3] > 0 else None for box in gt]


def check_loop(base: str, loop: str) -> None:
    """``ValueError`` unless ``base`` can run in ``loop``: closed loop needs a tracker with state."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop == "closed" and base not in OPENCV_TRACKERS:
        raise ValueError(f"base '{base}' has no tracker state to re-seed with the refined box, so closed loop "
                         f"is the same as open; closed loop needs an OpenCV tracker ({', '.join(OPENCV_TRACKERS)})")


def track_opencv(frames: Iterable[np.ndarray], init_box: Box, tracker: OpenCVTracker) -> Iterator[Box]:
    """Yield ``tracker``'s box on each frame, from ``init_box`` on the first; a lost frame repeats the last
    box (as trackers report). Lazy, so a caller may :meth:`~OpenCVTracker.reseed` it between frames."""
    for i, rgb in enumerate(frames):
        if i == 0:
            tracker.init(rgb, init_box)
            yield tuple(init_box)  # type: ignore[misc]
        else:
            box = tracker.update(rgb)
            yield box if box is not None else tracker.last  # type: ignore[misc]


def run_opencv(frames: Iterable[np.ndarray], init_box: Box, kind: str = "csrt") -> List[Optional[Box]]:
    """Track through ``frames`` from ``init_box`` in open loop (see :func:`track_opencv`)."""
    return list(track_opencv(frames, init_box, OpenCVTracker(kind)))


class TrackerBank:
    """One OpenCV tracker per target id over a stream of frames (replay of a bag with a base tracker).

    A new id starts its tracker from its first recorded box; after that its base box is the tracker's,
    and the recording only says which ids are present. In closed loop each tracker is re-seeded with
    its refined box after every frame but the one it started on (as eval does with frame 0).
    """

    def __init__(self, kind: str, loop: str = "open") -> None:
        check_loop(kind, loop)
        self.kind = kind
        self.closed = loop == "closed"
        self.trackers: Dict[str, OpenCVTracker] = {}
        self._started: List[str] = []

    @property
    def reseeds(self) -> int:
        return sum(t.reseeds for t in self.trackers.values())

    @property
    def failed_reseeds(self) -> int:
        return sum(t.failed_reseeds for t in self.trackers.values())

    def boxes(self, rgb: np.ndarray, detections: Sequence[Tuple[str, Box]]) -> List[Tuple[str, Box]]:
        """The base box of each recorded (id, box) on this frame; an empty id is keyed ``#index``."""
        height, width = rgb.shape[:2]
        out: List[Tuple[str, Box]] = []
        self._started = []
        for i, (tid, box) in enumerate(detections):
            key = tid or f"#{i}"
            tracker = self.trackers.get(key)
            if tracker is None:
                if len(box) != 4 or box_problem(box, width, height):
                    out.append((tid, box))  # left to the refiner, which flags it
                    continue
                tracker = self.trackers[key] = OpenCVTracker(self.kind)
                tracker.init(rgb, box)
                self._started.append(key)
            else:
                found = tracker.update(rgb)
                box = found if found is not None else tracker.last  # type: ignore[assignment]
            out.append((tid, box))
        return out

    def feedback(self, rgb: np.ndarray, refined: Dict[str, Box]) -> None:
        """Closed loop: re-seed each tracker with its target's refined box on this frame."""
        if not self.closed:
            return
        for key, box in refined.items():
            if key in self.trackers and key not in self._started:
                self.trackers[key].reseed(rgb, box)
