"""Target bookkeeping over a stream of frames, shared by the ROS node and offline replay.

Two modes:

* ``refine`` (plug-and-play): every incoming base box is refined, keyed by its id. A new id gets its
  template from the frame it first appears on; an id unseen for ``target_timeout_ns`` is forgotten.
  Boxes without an id are refined against a template from their own frame.
* ``track``: targets exist only through :meth:`RefineSession.add_targets`. Each frame, a target's base
  box is the detection with its id, else the anonymous detection overlapping its last box best, else
  its last refined box.

Not thread-safe: callers that share a session between threads hold their own lock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .boxes import Box, box_problem, iou
from .refiner import Refiner, Result

MODES = ("refine", "track")
ANONYMOUS_PREFIX = "#"


@dataclass
class Step:
    """What one frame produced: results by id (input order) and why some inputs were skipped."""

    results: Dict[str, Result] = field(default_factory=dict)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)   # (id, kind, message)
    forgotten: List[str] = field(default_factory=list)


class RefineSession:
    """Feed frames with base detections, get refined boxes; see the module docstring for the modes."""

    def __init__(self, refiner: Refiner, mode: str = "refine", max_targets: int = 8,
                 target_timeout_ns: int = 1_000_000_000) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.refiner = refiner
        self.mode = mode
        self.max_targets = int(max_targets)
        self.target_timeout_ns = int(target_timeout_ns)
        self.last_seen: Dict[str, int] = {}
        self.last_box: Dict[str, Box] = {}

    @property
    def targets(self) -> List[str]:
        """Live target ids (not per-frame anonymous ones)."""
        return [t for t in self.refiner.targets if isinstance(t, str) and not t.startswith(ANONYMOUS_PREFIX)]

    def add_targets(self, frame: np.ndarray, boxes: Mapping[str, Box], stamp_ns: int = 0,
                    color: str = "rgb") -> Dict[str, Result]:
        """Set templates for ``boxes`` (ids -> xywh) on ``frame`` and return their first refinement.

        Raises ``ValueError`` for a bad box or when ``max_targets`` would be exceeded; then nothing changes.
        """
        after = set(self.targets) | set(boxes)
        if len(after) > self.max_targets:
            raise ValueError(f"{len(after)} targets would exceed max_targets={self.max_targets}; clear some first")
        self.refiner.set_targets(frame, boxes, color=color)
        results = self.refiner.refine(frame, boxes, color=color)
        for tid, res in results.items():
            self.last_seen[tid] = stamp_ns
            self.last_box[tid] = res.box
        return results

    def clear(self, ids: Optional[Sequence[str]] = None) -> List[str]:
        """Forget ``ids`` (all when ``None``); returns the ids that were unknown."""
        wanted = list(self.targets if ids is None else ids)
        known = set(self.refiner.targets)
        unknown = [t for t in wanted if t not in known]
        for tid in wanted:
            if tid in known:
                self.refiner.clear(tid)
            self.last_seen.pop(tid, None)
            self.last_box.pop(tid, None)
        return unknown

    def step(self, frame: np.ndarray, detections: Sequence[Tuple[str, Box]], stamp_ns: int,
             mask: bool = False, color: str = "rgb") -> Step:
        """Refine one frame. ``detections`` are (id, xywh box) pairs; an empty id means anonymous."""
        out = Step()
        if self.mode == "refine":
            base = self._refine_mode_bases(frame, detections, stamp_ns, out)
        else:
            base = self._track_mode_bases(detections)
        if base:
            out.results = self.refiner.refine(frame, base, color=color, mask=mask)
        for tid in [t for t in out.results if t.startswith(ANONYMOUS_PREFIX)]:
            self.refiner.clear(tid)
        for tid, res in out.results.items():
            if not tid.startswith(ANONYMOUS_PREFIX):
                self.last_box[tid] = res.box
        return out

    def _refine_mode_bases(self, frame: np.ndarray, detections: Sequence[Tuple[str, Box]], stamp_ns: int,
                           out: Step) -> Dict[str, Box]:
        height, width = frame.shape[:2]
        base: Dict[str, Box] = {}
        new: Dict[str, Box] = {}
        for i, (tid, box) in enumerate(detections):
            tid = tid or f"{ANONYMOUS_PREFIX}{i}"
            problem = box_problem(box, width, height) if len(box) == 4 else "box must be 4 numbers"
            if problem:
                out.skipped.append((tid, "invalid_box", problem))
                continue
            if tid in base:
                out.skipped.append((tid, "duplicate_id", f"duplicate id '{tid}' in one frame; keeping the first"))
                continue
            if tid not in self.refiner.targets:
                if len(self.targets) + len([t for t in new if not t.startswith(ANONYMOUS_PREFIX)]) >= \
                        self.max_targets and not tid.startswith(ANONYMOUS_PREFIX):
                    out.skipped.append((tid, "over_max_targets",
                                        f"more than max_targets={self.max_targets} targets; dropping '{tid}'"))
                    continue
                new[tid] = tuple(float(v) for v in box)  # type: ignore[assignment]
            base[tid] = tuple(float(v) for v in box)  # type: ignore[assignment]
            if not tid.startswith(ANONYMOUS_PREFIX):
                self.last_seen[tid] = stamp_ns
        if new:
            self.refiner.set_targets(frame, new)
        for tid, seen in list(self.last_seen.items()):
            # abs(): a bag that loops back in time also ages targets out
            if abs(stamp_ns - seen) > self.target_timeout_ns and tid not in base:
                del self.last_seen[tid]
                self.last_box.pop(tid, None)
                if tid in self.refiner.targets:
                    self.refiner.clear(tid)
                out.forgotten.append(tid)
        return base

    def _track_mode_bases(self, detections: Sequence[Tuple[str, Box]]) -> Dict[str, Box]:
        usable = [(tid, box) for tid, box in detections
                  if len(box) == 4 and all(math.isfinite(v) for v in box) and box[2] > 0 and box[3] > 0]
        by_id = {tid: box for tid, box in usable if tid}
        anonymous = [box for tid, box in usable if not tid]
        base: Dict[str, Box] = {}
        for tid in self.targets:
            last = self.last_box.get(tid)
            if tid in by_id:
                base[tid] = by_id[tid]
            elif last is not None:
                best = max(anonymous, key=lambda b: iou(last, b), default=None)
                base[tid] = best if best is not None and iou(last, best) > 0.1 else last
        return base

