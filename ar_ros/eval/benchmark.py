"""Refine a suite of sequences and score base vs refined boxes (no bags involved: engine only)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from ..engine.refiner import Refiner
from ..engine.session import RefineSession
from .base_trackers import OPENCV_TRACKERS, jittered_gt, run_opencv
from .metrics import Scores, average, score
from .synthetic import Sequence


@dataclass
class SequenceResult:
    name: str
    base: Scores
    refined: Scores
    base_boxes: np.ndarray
    refined_boxes: np.ndarray
    gt: np.ndarray
    refine_ms: float
    fallbacks: int


def base_boxes(seq: Sequence, frames: List, base: str, seed: int) -> List[Optional[tuple]]:
    gt = [f.box for f in frames]
    if base == "jitter":
        return jittered_gt(gt, seed)
    if base in OPENCV_TRACKERS:
        return run_opencv((f.image for f in frames), gt[0], base)
    raise ValueError(f"unknown base tracker {base!r}")


def refine_sequence(refiner: Refiner, frames: List, boxes: List[Optional[tuple]]) -> tuple:
    """Refine a single-target sequence: template from frame 0's box, then every frame's base box."""
    refiner.clear()
    session = RefineSession(refiner, mode="refine", max_targets=1, target_timeout_ns=10**18)
    out = np.full((len(frames), 4), np.nan)
    times, fallbacks = [], 0
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        if box is None:
            continue
        t0 = time.perf_counter()
        step = session.step(frame.image, [("target", box)], stamp_ns=i)
        times.append((time.perf_counter() - t0) * 1e3)
        res = step.results.get("target")
        if res is not None:
            out[i] = res.box
            fallbacks += int(res.fallback)
    return out, float(np.median(times)) if times else float("nan"), fallbacks


def run_suite(refiner: Refiner, sequences: Iterable[Sequence], base: str = "jitter",
              progress: Optional[Callable[[str], None]] = None) -> List[SequenceResult]:
    """Score base and refined boxes on every sequence."""
    results = []
    for seq in sequences:
        frames = list(seq)
        gt = np.array([f.box for f in frames], np.float64)
        boxes = base_boxes(seq, frames, base, seed=seq.seed)
        base_arr = np.array([b if b is not None else (np.nan,) * 4 for b in boxes], np.float64)
        refined, ms, fallbacks = refine_sequence(refiner, frames, boxes)
        # frame 0 is the init box in both: score from frame 1 as OPE toolkits do for the refined part
        r = SequenceResult(f"seq{seq.seed}", score(base_arr[1:], gt[1:]), score(refined[1:], gt[1:]),
                           base_arr, refined, gt, ms, fallbacks)
        results.append(r)
        if progress is not None:
            progress(f"{r.name}: base AUC {r.base.auc * 100:.1f} -> refined {r.refined.auc * 100:.1f}")
    return results


def agreement(reference: Refiner, other: Refiner, sequences: Iterable[Sequence], base: str = "jitter") -> float:
    """Mean IoU between two refiners' refined boxes over every frame of ``sequences`` (same base boxes).

    Used to accept a faster variant (e.g. the int8 graph) only if it refines like the reference.
    """
    from ..engine.boxes import iou_rows
    ious = []
    for seq in sequences:
        frames = list(seq)
        boxes = base_boxes(seq, frames, base, seed=seq.seed)
        a, _, _ = refine_sequence(reference, frames, boxes)
        b, _, _ = refine_sequence(other, frames, boxes)
        valid = ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
        ious.append(iou_rows(a[valid], b[valid]))
    values = np.concatenate(ious) if ious else np.zeros(0)
    if values.size == 0:
        raise ValueError("no frame was refined by both refiners")
    return float(values.mean())


def summary(results: List[SequenceResult]) -> Dict[str, Scores]:
    return {"base": average(r.base for r in results), "refined": average(r.refined for r in results)}
