"""One-pass evaluation (OPE) metrics as the OTB / LaSOT / GOT-10k toolkits define them.

Boxes are (N,4) x, y, w, h in continuous pixels. A ground-truth row that is all zero or holds a NaN
marks an absent target (LaSOT's convention); such frames are left out of every metric. A prediction
that is NaN or has no area scores IoU 0 and an infinite centre error.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable

import numpy as np

from ..engine.boxes import iou_rows

SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)        # 0, 0.05, ..., 1 (OTB / LaSOT)
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=float)   # px
NORM_PRECISION_THRESHOLDS = np.linspace(0.0, 0.5, 51)


def absent(gt: np.ndarray) -> np.ndarray:
    """Rows where the target is absent: all zero or any NaN."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    return np.isnan(gt).any(axis=1) | (gt == 0).all(axis=1)


def ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-row IoU; 0 for NaN or empty predictions."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    bad = np.isnan(p).any(axis=1) | (p[:, 2] <= 0) | (p[:, 3] <= 0)
    out = iou_rows(np.where(bad[:, None], 0.0, p), gt)
    out[bad] = 0.0
    return out


def center_errors(pred: np.ndarray, gt: np.ndarray, normalise: bool = False) -> np.ndarray:
    """Distance between box centres (px), or with ``normalise`` in units of the GT width/height."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    d = (p[:, :2] + p[:, 2:] / 2) - (g[:, :2] + g[:, 2:] / 2)
    if normalise:
        d = d / np.where(g[:, 2:] > 0, g[:, 2:], np.nan)
    err = np.sqrt((d ** 2).sum(axis=1))
    bad = np.isnan(p).any(axis=1) | (p[:, 2] <= 0) | (p[:, 3] <= 0) | np.isnan(err)
    err[bad] = np.inf
    return err


@dataclass
class Scores:
    """Summary of one or several sequences (fractions 0..1)."""

    auc: float               # mean success rate over the 21 IoU thresholds
    precision: float         # centre error <= 20 px
    norm_precision: float    # normalised centre error <= 0.2
    ao: float                # GOT-10k average overlap (mean IoU)
    sr50: float              # GOT-10k success rate, IoU > 0.5
    sr75: float              # IoU > 0.75
    frames: int              # frames scored (target present)
    absent_frames: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def success_curve(iou: np.ndarray) -> np.ndarray:
    """Fraction of frames with IoU > t for each t in SUCCESS_THRESHOLDS."""
    return np.array([(iou > t).mean() if iou.size else 0.0 for t in SUCCESS_THRESHOLDS])


def precision_curve(err: np.ndarray, thresholds: np.ndarray = PRECISION_THRESHOLDS) -> np.ndarray:
    return np.array([(err <= t).mean() if err.size else 0.0 for t in thresholds])


def score(pred: np.ndarray, gt: np.ndarray) -> Scores:
    """OPE scores of one sequence (or of concatenated sequences, frame-weighted)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {len(pred)} rows but ground truth has {len(gt)}")
    keep = ~absent(gt)
    p, g = pred[keep], gt[keep]
    iou = ious(p, g)
    err = center_errors(p, g)
    nerr = center_errors(p, g, normalise=True)
    n = int(keep.sum())
    mean = lambda a: float(a.mean()) if a.size else 0.0  # noqa: E731
    return Scores(auc=float(success_curve(iou).mean()), precision=mean(err <= 20.0),
                  norm_precision=mean(nerr <= 0.2), ao=mean(iou), sr50=mean(iou > 0.5), sr75=mean(iou > 0.75),
                  frames=n, absent_frames=int(len(gt) - n))


def average(scores: Iterable[Scores]) -> Scores:
    """Sequence-averaged scores (each sequence weighs the same, as the benchmarks report)."""
    items = list(scores)
    if not items:
        raise ValueError("no sequences to average")
    keys = ("auc", "precision", "norm_precision", "ao", "sr50", "sr75")
    vals = {k: float(np.mean([getattr(s, k) for s in items])) for k in keys}
    return Scores(**vals, frames=sum(s.frames for s in items), absent_frames=sum(s.absent_frames for s in items))
