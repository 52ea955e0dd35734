"""Boxes and rotated rectangles from probability masks."""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np


def mask_to_box(prob: np.ndarray, threshold: float = 0.5, min_area: float = 100.0,
                roi: Optional[Tuple[int, int, int, int]] = None
                ) -> Tuple[Optional[Tuple[float, float, float, float]], Optional[np.ndarray]]:
    """Largest connected region of ``prob > threshold`` -> (axis-aligned xywh box, (4,2) rotated rectangle).

    Returns ``(None, None)`` when no region is larger than ``min_area`` px^2. ``roi`` (x1, y1, x2, y2)
    limits the search to where the mask can be non-zero.
    """
    ox, oy = 0, 0
    if roi is not None:
        x1, y1, x2, y2 = roi
        prob = prob[y1:y2, x1:x2]
        ox, oy = x1, y1
    if prob.size == 0:
        return None, None
    binary = (prob > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None, None
    areas = [cv2.contourArea(c) for c in contours]
    best = int(np.argmax(areas))
    if areas[best] <= min_area:
        return None, None
    contour = contours[best]
    x, y, w, h = cv2.boundingRect(contour)
    polygon = cv2.boxPoints(cv2.minAreaRect(contour)).astype(np.float64) + (ox, oy)
    return (float(x + ox), float(y + oy), float(w), float(h)), polygon
