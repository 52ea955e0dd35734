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

from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np

from .boxes import Box, box_problem, iou
from .refiner import Refiner, Result, passed_through

MODES = ("refine", "track")
ANONYMOUS_PREFIX = "#"


@dataclass
class Step:
    """What one frame produced: results by id (input order) and why some inputs were skipped."""

    results: Dict[str, Result] = field(default_factory=dict)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)   # (id, kind, message)
    forgotten: List[str] = field(default_factory=list)
    bases: Dict[Hashable, Box] = field(default_factory=dict)            # refiner key -> base box (planned)
    passed: Dict[str, Result] = field(default_factory=dict)  # id -> base box kept unrefined (e.g. invalid box)
    order: List[str] = field(default_factory=list)          # ids of ``results`` in input order


class RefineSession:
    """Feed frames with base detections, get refined boxes; see the module docstring for the modes.

    ``namespace`` lets several sessions (one per camera) share one :class:`Refiner`: targets are then
    keyed ``(namespace, id)`` inside it, so the same id on two cameras are two targets.
    """

    def __init__(self, refiner: Refiner, mode: str = "refine", max_targets: int = 8,
                 target_timeout_ns: int = 1_000_000_000, namespace: Optional[str] = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.refiner = refiner
        self.mode = mode
        self.max_targets = int(max_targets)
        self.target_timeout_ns = int(target_timeout_ns)
        self.namespace = namespace
        self.last_seen: Dict[str, int] = {}
        self.last_box: Dict[str, Box] = {}

    def _key(self, tid: str) -> Hashable:
        return tid if self.namespace is None else (self.namespace, tid)

    def _tid(self, key: Hashable) -> str:
        """The target id of a refiner key made by :meth:`_key`."""
        return cast(str, key) if self.namespace is None else cast(Tuple[str, str], key)[1]

    def _known(self) -> List[str]:
        """Ids of this session that have a template (anonymous ones included)."""
        if self.namespace is None:
            return [k for k in self.refiner.targets if isinstance(k, str) and not k.startswith("__")]
        return [k[1] for k in self.refiner.targets if isinstance(k, tuple) and k[0] == self.namespace]

    @property
    def targets(self) -> List[str]:
        """Live target ids (not per-frame anonymous ones)."""
        return [t for t in self._known() if not t.startswith(ANONYMOUS_PREFIX)]

    def add_targets(self, frame: np.ndarray, boxes: Mapping[str, Box], stamp_ns: int = 0,
                    color: str = "rgb") -> Dict[str, Result]:
        """Set templates for ``boxes`` (ids -> xywh) on ``frame`` and return their first refinement.

        Raises ``ValueError`` for a bad box or when ``max_targets`` would be exceeded; then nothing changes.
        """
        after = set(self.targets) | set(boxes)
        if len(after) > self.max_targets:
            raise ValueError(f"{len(after)} targets would exceed max_targets={self.max_targets}; clear some first")
        keyed = {self._key(t): b for t, b in boxes.items()}
        self.refiner.set_targets(frame, keyed, color=color)
        refined = self.refiner.refine(frame, keyed, color=color)
        results = {t: refined[self._key(t)] for t in boxes}
        for tid, res in results.items():
            self.last_seen[tid] = stamp_ns
            self.last_box[tid] = res.box
        return results

    def clear(self, ids: Optional[Sequence[str]] = None) -> List[str]:
        """Forget ``ids`` (all when ``None``); returns the ids that were unknown."""
        wanted = list(self.targets if ids is None else ids)
        known = set(self._known())
        unknown = [t for t in wanted if t not in known]
        for tid in wanted:
            if tid in known:
                self.refiner.clear(self._key(tid))
            self.last_seen.pop(tid, None)
            self.last_box.pop(tid, None)
        return unknown

    def step(self, frame: np.ndarray, detections: Sequence[Tuple[str, Box]], stamp_ns: int,
             mask: bool = False, color: str = "rgb") -> Step:
        """Refine one frame. ``detections`` are (id, xywh box) pairs; an empty id means anonymous."""
        step = self.plan(frame, detections, stamp_ns, color)
        results = self.refiner.refine(frame, step.bases, color=color, mask=mask) if step.bases else {}
        return self.finish(step, results)

    def plan(self, frame: np.ndarray, detections: Sequence[Tuple[str, Box]], stamp_ns: int,
             color: str = "rgb") -> Step:
        """First half of :meth:`step`: templates for new ids, and the base boxes to refine (``step.bases``)."""
        out = Step()
        if self.mode == "refine":
            bases = self._refine_mode_bases(frame, detections, stamp_ns, out, color)
        else:
            bases = self._track_mode_bases(detections, frame.shape[1], frame.shape[0])
            out.order = list(bases)
        out.bases = {self._key(t): b for t, b in bases.items()}
        return out

    def finish(self, step: Step, results: Mapping[Hashable, Result]) -> Step:
        """Second half of :meth:`step`: file the refiner's results (keyed as in ``step.bases``)."""
        refined = {}
        for key in step.bases:
            tid = self._tid(key)
            refined[tid] = results[key]
            if tid.startswith(ANONYMOUS_PREFIX):
                self.refiner.clear(key)
            else:
                self.last_box[tid] = results[key].box
        step.results = {tid: refined[tid] if tid in refined else step.passed[tid] for tid in step.order}
        return step

    def _refine_mode_bases(self, frame: np.ndarray, detections: Sequence[Tuple[str, Box]], stamp_ns: int,
                           out: Step, color: str) -> Dict[str, Box]:
        height, width = frame.shape[:2]
        base: Dict[str, Box] = {}
        new: Dict[str, Box] = {}
        id_less: Dict[str, Box] = {}
        known = set(self._known())
        live = len([t for t in known if not t.startswith(ANONYMOUS_PREFIX)])
        for i, (tid, box) in enumerate(detections):
            tid = tid or f"{ANONYMOUS_PREFIX}{i}"
            problem = box_problem(box, width, height) if len(box) == 4 else "box must be 4 numbers"
            if problem:
                out.skipped.append((tid, "invalid_box", problem))
                if tid not in base and tid not in out.passed:  # same id out, base box kept, flagged
                    out.passed[tid] = passed_through(box, problem)
                    out.order.append(tid)
                continue
            if tid in base:
                out.skipped.append((tid, "duplicate_id", f"duplicate id '{tid}' in one frame; keeping the first"))
                continue
            if tid.startswith(ANONYMOUS_PREFIX):  # refined with what is left of max_targets, below
                id_less[tid] = tuple(float(v) for v in box)  # type: ignore[assignment]
                out.order.append(tid)
                continue
            if tid not in known:
                if live + len(new) >= self.max_targets:
                    reason = f"more than max_targets={self.max_targets} targets; '{tid}' keeps its base box"
                    out.skipped.append((tid, "over_max_targets", reason))
                    if tid not in out.passed:  # same id out, flagged
                        out.passed[tid] = passed_through(box, reason)
                        out.order.append(tid)
                    continue
                new[tid] = tuple(float(v) for v in box)  # type: ignore[assignment]
            base[tid] = tuple(float(v) for v in box)  # type: ignore[assignment]
            if out.passed.pop(tid, None) is None:  # else a valid box replaces an invalid one of this id
                out.order.append(tid)
            self.last_seen[tid] = stamp_ns
        # id-less boxes each need a template of their own: at most max_targets boxes are refined per frame,
        # the rest keep their base box, flagged (1000 of them in one message took seconds and 50+ MB)
        for tid, box in id_less.items():
            if len(base) < self.max_targets:
                new[tid] = base[tid] = box
                continue
            reason = f"more than max_targets={self.max_targets} targets in this frame; base box kept"
            out.skipped.append((tid, "over_max_targets", reason))
            out.passed[tid] = passed_through(box, reason)
        if new:
            self.refiner.set_targets(frame, {self._key(t): b for t, b in new.items()}, color=color)
        for tid, seen in list(self.last_seen.items()):
            # abs(): a bag that loops back in time also ages targets out
            if abs(stamp_ns - seen) > self.target_timeout_ns and tid not in base:
                del self.last_seen[tid]
                self.last_box.pop(tid, None)
                if tid in known:
                    self.refiner.clear(self._key(tid))
                out.forgotten.append(tid)
        return base

    def _track_mode_bases(self, detections: Sequence[Tuple[str, Box]], width: int, height: int) -> Dict[str, Box]:
        usable = [(tid, box) for tid, box in detections if len(box) == 4 and not box_problem(box, width, height)]
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
