"""Boxes and rotated rectangles from probability masks."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import cv2
import numpy as np

from .boxes import iou, xyxy_to_xywh


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


# box_mode: the corner head's box | moved towards the mask's box (fuse_boxes) | fused where the mask branch is the
# slim one (cheap: about a third of a box's time on CPU), corner with the authors' (about as dear as the box)
BOX_MODES = ("corner", "fused", "auto")
DEFAULT_BOX_MODE = "auto"


def resolve_box_mode(box_mode: str, mask_head: str) -> str:
    """``corner`` or ``fused``: what ``box_mode`` means for a network with this ``NetConfig.mask_head``."""
    if box_mode == "auto":
        return "corner" if mask_head == "authors" else "fused"
    return box_mode

# box_mode "fused" (chosen on the validation suite, README "Box from corners and mask"): where the mask's
# box and the corner head's box agree to at least FUSE_MIN_IOU, the output is FUSE_MASK_WEIGHT of the way
# from the corner box to the mask box; elsewhere (no mask region, or a disagreement) the corner box
FUSE_MIN_IOU = 0.6
FUSE_MASK_WEIGHT = 0.7
FUSE_MIN_AREA = 16.0  # crop px^2: a smaller mask region is no box


def crop_mask_box(prob: np.ndarray, threshold: float = 0.5, min_area: float = FUSE_MIN_AREA) -> Optional[np.ndarray]:
    """x1,y1,x2,y2 (crop px, pixel edges) of the largest connected region of ``prob > threshold`` in a
    crop's (S,S) probabilities; None when no region is larger than ``min_area``."""
    binary = (prob > threshold).view(np.uint8)
    x0, y0, w0, h0 = cv2.boundingRect(binary)  # of every pixel above threshold
    if w0 == 0:
        return None
    # the regions inside that rectangle are the whole crop's: labelling it alone is exact and about a third
    # of the time (OpenCV's statistics pass costs ~0.07 ms on a 128x128 crop, more than the rest of fusing).
    # Started on even coordinates, OpenCV labels in 2x2 blocks as over the whole crop, so of two regions of
    # the same largest area the same one comes first
    x1, y1 = x0 + w0, y0 + h0
    x0, y0 = x0 & ~1, y0 & ~1
    part = np.ascontiguousarray(binary[y0:y1, x0:x1])
    count, _, stats, _ = cv2.connectedComponentsWithStats(part, connectivity=8)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[best]
    if area <= min_area:
        return None
    return np.array([x + x0, y + y0, x + x0 + w, y + y0 + h], dtype=np.float64)


LOGIT_THRESHOLDS = (1e-4, 1.0 - 1e-4)  # mask thresholds at which logits_mask_box equals crop_mask_box


def logits_mask_box(logits: np.ndarray, size: int, threshold: float = 0.5,
                    min_area: float = FUSE_MIN_AREA) -> Optional[np.ndarray]:
    """:func:`crop_mask_box` of the mask decoder's (h,w) logits (``AlphaRefineNet.search(mask_logits=True)``)
    without the probabilities: upsampled bilinearly to (size,size) like the decoder's last step (half-pixel
    centres; within 3e-7 of torch's interpolate relative to the largest logit) and thresholded at
    logit(``threshold``), for thresholds in :data:`LOGIT_THRESHOLDS` (beyond them float32's sigmoid rounds
    to 0 or 1 where the logit does not: use the probabilities)."""
    up = cv2.resize(np.ascontiguousarray(logits, dtype=np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return crop_mask_box(up, math.log(threshold / (1.0 - threshold)), min_area)


def fuse_boxes(corner_xyxy: np.ndarray, mask_xyxy: Optional[np.ndarray], min_iou: float = FUSE_MIN_IOU,
               weight: float = FUSE_MASK_WEIGHT) -> np.ndarray:
    """The corner box moved ``weight`` of the way to the mask box when the two agree (IoU >= ``min_iou``)."""
    corner = np.asarray(corner_xyxy, dtype=np.float64)
    if mask_xyxy is None or iou(xyxy_to_xywh(corner), xyxy_to_xywh(mask_xyxy)) < min_iou:
        return corner
    return (1.0 - weight) * corner + weight * mask_xyxy
