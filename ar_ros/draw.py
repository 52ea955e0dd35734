"""Overlay rendering shared by the node (rviz overlay topic) and the evaluation (videos, plots)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np

_PALETTE = [(255, 99, 71), (60, 179, 113), (30, 144, 255), (238, 130, 238), (255, 215, 0),
            (0, 206, 209), (255, 140, 0), (199, 21, 133)]


def color_for(index: int) -> Tuple[int, int, int]:
    """A stable RGB colour per target index."""
    return _PALETTE[index % len(_PALETTE)]


def _rect(img: np.ndarray, box: Sequence[float], color, thickness: int) -> None:
    x, y, w, h = box
    if not all(np.isfinite([x, y, w, h])):
        return
    # clipped: a finite but absurd box (w = 2e300, passed through as a fallback) overflows OpenCV's int
    x1, y1, x2, y2 = (int(round(v)) for v in np.clip([x, y, x + w, y + h], -(1 << 20), 1 << 20))
    cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)


def draw_targets(rgb: np.ndarray, targets: Iterable[Tuple[str, Sequence[float], Sequence[float], float, bool]],
                 masks: Optional[Sequence[Optional[np.ndarray]]] = None, mask_threshold: float = 0.5,
                 gt: Optional[Sequence[float]] = None) -> np.ndarray:
    """Draw on a copy of an RGB frame: mask tint, base box (thin), refined box (thick), ``id score``.

    ``targets`` items are (id, base box, refined box, score, fallback); a fallback is labelled as such.
    ``gt`` (optional) is drawn in white.
    """
    out = rgb.copy()
    targets = list(targets)
    if masks is not None:
        tint = out.astype(np.float32)
        for i, m in enumerate(masks):
            if m is not None:
                sel = m > mask_threshold
                tint[sel] = 0.55 * tint[sel] + 0.45 * np.array(color_for(i), np.float32)
        out = tint.astype(np.uint8)
    if gt is not None:
        _rect(out, gt, (255, 255, 255), 1)
    thick = max(2, int(round(min(out.shape[:2]) / 240)))
    for i, (tid, base, refined, score, fallback) in enumerate(targets):
        color = color_for(i)
        _rect(out, base, (200, 200, 200), 1)
        _rect(out, refined, color, thick)
        label = f"{tid} {score:.2f}" + (" fallback" if fallback else "")
        x, y = refined[0], refined[1]
        if np.isfinite(x) and np.isfinite(y):
            org = (int(min(max(x, 0), out.shape[1])), int(min(max(y - 6, 12), out.shape[0])))
            cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out


def label_image(shape: Tuple[int, int], masks: Sequence[Optional[np.ndarray]], scores: Sequence[float],
                threshold: float = 0.5, binary: bool = False) -> np.ndarray:
    """Full-frame mono8 label image: 0 background, k for the k-th mask (1..254); overlaps go to the
    higher score. ``binary`` gives the union as 0/255 instead."""
    out = np.zeros(shape, np.uint8)
    best = np.full(shape, -np.inf, np.float32)
    for k, (m, s) in enumerate(zip(masks, scores)):
        if m is None or k >= 254:
            continue
        sel = (m > threshold) & (s > best)
        out[sel] = 255 if binary else k + 1
        best[sel] = s
    return out
