"""Refine a suite of sequences and score base vs refined boxes (no bags involved: engine only)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from ..engine.boxes import Box, iou
from ..engine.refiner import Refiner
from ..engine.quality import trusted
from ..engine.session import RefineSession
from ..data.opencv_trackers import OpenCVTracker
from ..data.base_trackers import OPENCV_TRACKERS, check_loop, jittered_gt, oracle, run_opencv, track_opencv
from .calibration import QualityPairs
from .metrics import Scores, average, score
from ..data.synthetic import Sequence


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
    reseeds: int = 0  # closed loop: frames on which the base tracker was re-seeded with the refined box
    kept: int = 0     # frames whose output was the base box, as good as the refinement (keep_iou, quality head)
    lost: int = 0     # frames on which a quality head had flagged the target lost
    failed_reseeds: int = 0  # closed loop: refined boxes OpenCV refused to start on (the tracker went on)
    quality: Optional[QualityPairs] = None  # with a quality head: predicted vs true IoUs, refined and base box


#: A refined box is on a twin of its target when it overlaps the twin's box by more than this, and more
#: than it overlaps the target
TWIN_IOU = 0.3


def on_twin(box: Box, truth: Box, distractors: List[tuple]) -> bool:
    """Whether ``box`` sits on a twin of the target (``distractors``: ``Sequence.distractor_boxes``)."""
    return any(twin and iou(box, d) > max(TWIN_IOU, iou(box, truth)) for d, twin in distractors)


def quality_pairs(decisions: Decisions, gt: np.ndarray,
                  distractors: Optional[Callable[[int], List[tuple]]] = None) -> Optional[QualityPairs]:
    """The quality head's predictions on a run against the true IoUs of its boxes, with the refined box's
    IoU with the base box (None without a head); with ``distractors`` (frame index -> the synthetic
    sequence's ``distractor_boxes``) also which refined boxes sit on a twin of the target."""
    scored = [row for row in decisions.quality if gt[row[0]][2] > 0 and gt[row[0]][3] > 0]
    if not scored:
        return None
    rows = [(q, iou(raw, gt[i]), bq, iou(base, gt[i]), iou(raw, base)) for i, q, bq, raw, base in scored]
    twins = None if distractors is None else \
        np.array([on_twin(raw, gt[i], distractors(i)) for i, _, _, raw, _ in scored], bool)
    q, true_q, base_q, true_base, agreement = (np.array(column, np.float64) for column in zip(*rows))
    return QualityPairs(q, true_q, base_q, true_base, agreement, twins)


def base_boxes(seq: Sequence, frames: List, base: str, seed: int) -> List[Optional[tuple]]:
    gt = [f.box for f in frames]
    if base == "jitter":
        return jittered_gt(gt, seed)
    if base == "oracle":
        return oracle(gt)
    if base in OPENCV_TRACKERS:
        return run_opencv((f.image for f in frames), gt[0], base)
    raise ValueError(f"unknown base tracker {base!r}")


@dataclass
class Decisions:
    """What the refiner decided on a run's frames (from frame 1 on): boxes output as the base box because
    it was as good (``kept``), and boxes of targets a quality head had flagged lost."""

    kept: int = 0
    lost: int = 0
    #: with a quality head: (frame index, predicted IoU of the refined box, of the base box, refined box, base box)
    quality: List[tuple] = field(default_factory=list)


def refine_sequence(refiner: Refiner, frames: List, boxes: Iterable[Optional[tuple]],
                    feedback: Optional[Callable[[int, tuple], object]] = None,  # its return value is unused
                    decisions: Optional[Decisions] = None) -> tuple:
    """Refine a single-target sequence: template from frame 0's box, then every frame's base box.

    ``boxes`` is consumed one frame at a time, after ``feedback(frame index, refined box)`` was called
    for the frame before (from frame 1 on: frame 0 holds the init box), so it may be a tracker that
    takes the refined box back (closed loop).
    """
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
            if decisions is not None and i > 0:
                decisions.kept += int(res.kept)
                decisions.lost += int(res.lost)
                if res.base_quality is not None and res.raw_box is not None:
                    decisions.quality.append((i, res.score, res.base_quality, res.raw_box, res.base_box))
            if feedback is not None and i > 0 and trusted(res, refiner.reseed_below):  # else: its own state
                feedback(i, res.box)
    return out, float(np.median(times)) if times else float("nan"), fallbacks


def closed_loop_sequence(refiner: Refiner, frames: List, kind: str, decisions: Optional[Decisions] = None) -> tuple:
    """The paper's loop: an OpenCV tracker from frame 0's box, re-seeded with the refined box every frame.

    Returns (base boxes, refined boxes, median refine ms, fallbacks, re-seeds, failed re-seeds).
    """
    tracker = OpenCVTracker(kind)
    boxes: List[Optional[tuple]] = []

    def base_stream():
        for box in track_opencv((f.image for f in frames), frames[0].box, tracker):
            boxes.append(box)
            yield box

    refined, ms, fallbacks = refine_sequence(refiner, frames, base_stream(),
                                             lambda i, box: tracker.reseed(frames[i].image, box), decisions)
    return boxes, refined, ms, fallbacks, tracker.reseeds, tracker.failed_reseeds


def run_suite(refiner: Refiner, sequences: Iterable[Sequence], base: str = "jitter",
              progress: Optional[Callable[[str], None]] = None, loop: str = "open") -> List[SequenceResult]:
    """Score base and refined boxes on every sequence; ``loop`` see :data:`~.base_trackers.LOOPS`."""
    check_loop(base, loop)
    results = []
    for seq in sequences:
        frames = list(seq)
        gt = np.array([f.box for f in frames], np.float64)
        reseeds = failed = 0
        decisions = Decisions()
        if loop == "closed":
            boxes, refined, ms, fallbacks, reseeds, failed = closed_loop_sequence(refiner, frames, base, decisions)
        else:
            boxes = base_boxes(seq, frames, base, seed=seq.seed)
            refined, ms, fallbacks = refine_sequence(refiner, frames, boxes, decisions=decisions)
        base_arr = np.array([b if b is not None else (np.nan,) * 4 for b in boxes], np.float64)
        # frame 0 is the init box in both: score from frame 1 as OPE toolkits do for the refined part
        name = getattr(seq, "name", f"seq{seq.seed}")  # real sequences are named, synthetic ones by seed
        r = SequenceResult(name, score(base_arr[1:], gt[1:]), score(refined[1:], gt[1:]),
                           base_arr, refined, gt, ms, fallbacks, reseeds=reseeds, failed_reseeds=failed,
                           kept=decisions.kept, lost=decisions.lost,
                           quality=quality_pairs(decisions, gt, getattr(seq, "distractor_boxes", None)))
        results.append(r)
        if progress is not None:
            progress(f"{r.name}: base AUC {r.base.auc * 100:.1f} -> refined {r.refined.auc * 100:.1f}")
    return results


#: A faster variant (the int8 graph, bf16) is accepted only if its boxes agree with the reference this well
AGREEMENT_MIN_IOU = 0.95


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
