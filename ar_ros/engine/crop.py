"""Search-region crops and the maps back to the frame, in two flavours.

``exact`` reproduces the authors' ``sample_target_SE`` crop bit for bit: per-side sizes
``ceil(f*w)``/``ceil(f*h)`` (aspect-distorting), Python ``round`` (halves to even) for the origin,
black padding, the right/bottom off-by-one (a window that reaches the last column or row drops it and
pads instead), ``cv2.resize`` INTER_LINEAR on uint8, and boxes mapped back from the *unrounded* origin
``x - (f-1)/2*w``. Use it with the authors' weights.

``clean`` (our models) samples the same window without the quirks: the window is exactly
``f*w`` x ``f*h`` centred on the box, sampled by one bilinear warp with pixel centres treated
consistently, and boxes and masks are mapped back through the same transform.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

CROP_MODES = ("exact", "clean")


@dataclass(frozen=True)
class CropWindow:
    """Where a crop of ``size`` px came from: crop pixel ``u`` maps to frame ``x0 + u * sx``."""

    x0: float
    y0: float
    sx: float
    sy: float
    size: int
    mode: str
    # integer window of the exact crop (x1, y1, ws, hs); unused in clean mode
    ix1: int = 0
    iy1: int = 0
    ws: int = 0
    hs: int = 0

    def box_to_frame(self, xyxy: np.ndarray) -> np.ndarray:
        """(..., 4) crop-pixel x1,y1,x2,y2 -> (..., 4) frame x,y,w,h."""
        xyxy = np.asarray(xyxy, dtype=np.float64)
        x1 = self.x0 + xyxy[..., 0] * self.sx
        y1 = self.y0 + xyxy[..., 1] * self.sy
        return np.stack([x1, y1, (xyxy[..., 2] - xyxy[..., 0]) * self.sx,
                         (xyxy[..., 3] - xyxy[..., 1]) * self.sy], axis=-1)

    def mask_offset(self) -> np.ndarray:
        """What to add to a mask pixel's crop x1,y1,x2,y2 to put it in :meth:`box_to_frame`'s crop
        coordinates: in exact mode the mask's grid starts at the integer window (``paste_mask``), the
        boxes' at ``x0``; 0 in clean mode."""
        if self.mode != "exact":
            return np.zeros(4)
        dx, dy = (self.ix1 - self.x0) / self.sx, (self.iy1 - self.y0) / self.sy
        return np.array([dx, dy, dx, dy])

    def box_to_crop(self, box: Tuple[float, float, float, float]) -> np.ndarray:
        """Frame x,y,w,h -> crop-pixel x1,y1,x2,y2 (the inverse of :meth:`box_to_frame`)."""
        x, y, w, h = box
        x1 = (x - self.x0) / self.sx
        y1 = (y - self.y0) / self.sy
        return np.array([x1, y1, x1 + w / self.sx, y1 + h / self.sy])


def window_for(box: Tuple[float, float, float, float], factor: float, size: int, mode: str) -> CropWindow:
    """The crop window of ``box`` enlarged by ``factor`` per side."""
    x, y, w, h = box
    if mode == "exact":
        ws = max(1, math.ceil(factor * w))
        hs = max(1, math.ceil(factor * h))
        ix1 = round(x + 0.5 * w - 0.5 * ws)  # Python round: halves go to the even integer, as the authors'
        iy1 = round(y + 0.5 * h - 0.5 * hs)
        return CropWindow(x0=x - (factor - 1) / 2 * w, y0=y - (factor - 1) / 2 * h,
                          sx=ws / size, sy=hs / size, size=size, mode=mode, ix1=ix1, iy1=iy1, ws=ws, hs=hs)
    if mode == "clean":
        cw, ch = factor * w, factor * h
        return CropWindow(x0=x + 0.5 * w - 0.5 * cw, y0=y + 0.5 * h - 0.5 * ch,
                          sx=cw / size, sy=ch / size, size=size, mode=mode)
    raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")


def crop(frame: np.ndarray, window: CropWindow) -> np.ndarray:
    """Cut and resize the window from an HxWxC uint8 frame -> size x size x C uint8 (black outside)."""
    if window.mode == "exact":
        return _crop_exact(frame, window)
    m = np.array([[window.sx, 0.0, window.x0 + 0.5 * window.sx - 0.5],
                  [0.0, window.sy, window.y0 + 0.5 * window.sy - 0.5]])
    return cv2.warpAffine(frame, m, (window.size, window.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _crop_exact(frame: np.ndarray, win: CropWindow) -> np.ndarray:
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = win.ix1, win.iy1, win.ix1 + win.ws, win.iy1 + win.hs
    pad_l, pad_t = max(0, -x1), max(0, -y1)
    pad_r, pad_b = max(x2 - width + 1, 0), max(y2 - height + 1, 0)  # the authors' off-by-one
    inner = frame[y1 + pad_t:y2 - pad_b, x1 + pad_l:x2 - pad_r]
    if inner.size == 0 or inner.shape[0] + pad_t + pad_b != win.hs or inner.shape[1] + pad_l + pad_r != win.ws:
        padded = np.zeros((win.hs, win.ws) + frame.shape[2:], dtype=frame.dtype)
        oy, ox = y1 + pad_t - y1, x1 + pad_l - x1
        padded[oy:oy + inner.shape[0], ox:ox + inner.shape[1]] = inner
    elif pad_l or pad_t or pad_r or pad_b:
        padded = cv2.copyMakeBorder(inner, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_CONSTANT, value=0)
    else:
        padded = inner
    return cv2.resize(padded, (win.size, win.size), interpolation=cv2.INTER_LINEAR)


def paste_mask(prob: np.ndarray, window: CropWindow, height: int, width: int) -> np.ndarray:
    """Map a size x size float32 probability map back into an ``height`` x ``width`` frame (0 outside)."""
    out = np.zeros((height, width), dtype=np.float32)
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if window.mode == "exact":
        # resized to (ws, hs) and placed at the integer window, as the authors' get_mask
        resized = cv2.resize(prob, (window.ws, window.hs), interpolation=cv2.INTER_LINEAR)
        fx1, fy1 = max(window.ix1, 0), max(window.iy1, 0)
        fx2, fy2 = min(window.ix1 + window.ws, width), min(window.iy1 + window.hs, height)
        if fx2 > fx1 and fy2 > fy1:
            out[fy1:fy2, fx1:fx2] = resized[fy1 - window.iy1:fy2 - window.iy1, fx1 - window.ix1:fx2 - window.ix1]
        return out
    rx1 = max(int(math.floor(window.x0)), 0)
    ry1 = max(int(math.floor(window.y0)), 0)
    rx2 = min(int(math.ceil(window.x0 + window.size * window.sx)), width)
    ry2 = min(int(math.ceil(window.y0 + window.size * window.sy)), height)
    if rx2 <= rx1 or ry2 <= ry1:
        return out
    # frame pixel i (centre i + 0.5) samples crop coordinate (i + 0.5 - x0) / sx - 0.5
    m = np.array([[1.0 / window.sx, 0.0, (rx1 + 0.5 - window.x0) / window.sx - 0.5],
                  [0.0, 1.0 / window.sy, (ry1 + 0.5 - window.y0) / window.sy - 0.5]])
    out[ry1:ry2, rx1:rx2] = cv2.warpAffine(prob, m, (rx2 - rx1, ry2 - ry1),
                                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def normalisation_table() -> np.ndarray:
    """(3, 256) float32 table of ImageNet-normalised RGB values for every uint8 level.

    Computed in float64 and cast once, which is bit-identical to normalising each pixel in float64
    (the authors' way) while costing one lookup per pixel.
    """
    mean = np.array([0.485, 0.456, 0.406])[:, None]
    std = np.array([0.229, 0.224, 0.225])[:, None]
    return ((np.arange(256)[None, :] / 255.0 - mean) / std).astype(np.float32)
