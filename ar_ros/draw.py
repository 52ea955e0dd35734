"""Overlay rendering shared by the node (rviz overlay topic) and the evaluation (videos, plots)."""
from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

log = logging.getLogger(__name__)

_PALETTE = [(255, 99, 71), (60, 179, 113), (30, 144, 255), (238, 130, 238), (255, 215, 0),
            (0, 206, 209), (255, 140, 0), (199, 21, 133)]


def color_for(index: int) -> Tuple[int, int, int]:
    """A stable RGB colour per target index."""
    return _PALETTE[index % len(_PALETTE)]


GT_COLOR = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
BoxLike = Union[Sequence[float], np.ndarray]  # x, y, w, h as numbers or a (4,) array


def _corners(img: np.ndarray, box: BoxLike) -> Optional[Tuple[int, int, int, int]]:
    x, y, w, h = box
    if not all(np.isfinite([x, y, w, h])):
        return None
    # clipped just outside the frame: a finite but absurd box (w = 2e300, passed through as a fallback)
    # overflows OpenCV's int, and a dashed edge is drawn only where it can be seen
    hi = max(img.shape[:2]) + 8
    x1, y1, x2, y2 = (int(round(v)) for v in np.clip([x, y, x + w, y + h], -8, hi))
    return x1, y1, x2, y2


def _rect(img: np.ndarray, box: BoxLike, color, thickness: int) -> None:
    corners = _corners(img, box)
    if corners is not None:
        x1, y1, x2, y2 = corners
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)


def _dashed_line(img: np.ndarray, a: Tuple[int, int], b: Tuple[int, int], color, thickness: int,
                 dash: int = 6) -> None:
    length = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
    for t in range(0, length, 2 * dash):
        e = min(t + dash, length)
        cv2.line(img, (a[0] + (b[0] - a[0]) * t // length, a[1] + (b[1] - a[1]) * t // length),
                 (a[0] + (b[0] - a[0]) * e // length, a[1] + (b[1] - a[1]) * e // length), color, thickness,
                 cv2.LINE_AA)


def _dashed_rect(img: np.ndarray, box: Sequence[float], color, thickness: int) -> None:
    corners = _corners(img, box)
    if corners is not None:
        x1, y1, x2, y2 = corners
        for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
            _dashed_line(img, a, b, color, thickness)


def _label(img: np.ndarray, text: str, org: Tuple[int, int], color, scale: float) -> None:
    """``text`` on a filled plate of ``color``. One putText of thickness 1: a thick outline drawn under
    thin text drifts apart on OpenCV 5, whose glyph advance grows with the thickness (a ghost copy)."""
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = org
    cv2.rectangle(img, (x, y - h - 3), (x + w + 4, y + base), color, cv2.FILLED)
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(img, text, (x + 2, y - 1), _FONT, scale, ink, 1, cv2.LINE_AA)


def _legend(img: np.ndarray, color, thick: int, with_gt: bool, scale: float) -> None:
    """Bottom-left key: which line is the ground truth, the base tracker's box and the refined box."""
    rows = ([("GT", GT_COLOR, 1, False)] if with_gt else []) + [("base", color, 1, True),
                                                                ("refined", color, thick, False)]
    (_, h), _ = cv2.getTextSize("refined", _FONT, scale, 1)
    step, sample = h + 8, 4 * h
    top = img.shape[0] - len(rows) * step - 6
    width = sample + 12 + cv2.getTextSize("refined", _FONT, scale, 1)[0][0] + 6
    plate = img[max(top - 4, 0):img.shape[0] - 2, 2:2 + width]
    plate[:] = (0.4 * plate).astype(img.dtype)  # darkened, the frame still shows through
    for k, (name, col, th, dashed) in enumerate(rows):
        y = top + k * step + step // 2
        (_dashed_line if dashed else cv2.line)(img, (8, y), (8 + sample, y), col, th)
        cv2.putText(img, name, (14 + sample, y + h // 2), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_targets(rgb: np.ndarray,
                 targets: Iterable[Tuple[str, Sequence[float], Sequence[float], float, Union[bool, str]]],
                 masks: Optional[Sequence[Optional[np.ndarray]]] = None, mask_threshold: float = 0.5,
                 gt: Optional[BoxLike] = None, legend: bool = True) -> np.ndarray:
    """Draw on a copy of an RGB frame: mask tint, base box (thin, dashed), refined box (thick), ``id score``.

    ``targets`` items are (id, base box, refined box, score, flag); ``flag`` True labels a fallback, a string
    is the label's suffix itself (e.g. "LOST" for a target the quality head lost).
    ``gt`` (optional) is drawn thin, solid white. ``legend`` adds a key in the bottom-left corner.
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
        _rect(out, gt, GT_COLOR, 1)
    thick = max(2, int(round(min(out.shape[:2]) / 240)))
    scale = max(0.4, min(out.shape[:2]) / 960)
    for i, (tid, base, refined, score, fallback) in enumerate(targets):
        color = color_for(i)
        _dashed_rect(out, base, color, max(1, thick // 2))
        _rect(out, refined, color, thick)
        suffix = fallback if isinstance(fallback, str) else ("fallback" if fallback else "")
        label = f"{tid} {score:.2f}" + (f" {suffix}" if suffix else "")
        x, y = refined[0], refined[1]
        if np.isfinite(x) and np.isfinite(y):
            org = (int(min(max(x, 0), out.shape[1])), int(min(max(y - 4, 16), out.shape[0])))
            _label(out, label, org, color, scale)
    if legend and (targets or gt is not None) and min(out.shape[:2]) >= 120:
        _legend(out, color_for(0), thick, gt is not None, scale)
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


@functools.lru_cache(maxsize=None)
def video_codec() -> str:
    """'avc1' (H.264, what browsers play) where this OpenCV build can encode it, else 'mp4v' (said once)."""
    with tempfile.TemporaryDirectory() as tmp:
        # OpenCV's pip wheels have no software H.264 encoder; the failed attempt prints FFmpeg errors
        # straight to file descriptor 2, which is muted while probing
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            probe = cv2.VideoWriter(os.path.join(tmp, "probe.mp4"), _fourcc("avc1"), 10, (64, 48))
            ok = probe.isOpened()
            probe.release()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)
    if ok:
        return "avc1"
    log.warning("this OpenCV build cannot write H.264: overlay videos are MPEG-4 Part 2 ('mp4v'), which "
                "browsers do not play (VLC and mpv do); convert one with "
                "`ffmpeg -i overlay.mp4 -c:v libx264 -pix_fmt yuv420p overlay_h264.mp4`")
    return "mp4v"


def _fourcc(code: str) -> int:
    """OpenCV's four-character code of a codec, in the spelling OpenCV 4 and 5 both have (the stubs
    shipped with OpenCV 5 list only ``cv2.VideoWriter.fourcc``)."""
    return cv2.VideoWriter_fourcc(*code)  # type: ignore[attr-defined]


def open_video(path: Union[str, Path], fps: float, size: Tuple[int, int]) -> cv2.VideoWriter:
    """An .mp4 writer for BGR frames of ``size`` (width, height), in the best codec this OpenCV has."""
    writer = cv2.VideoWriter(str(path), _fourcc(video_codec()), fps, size)
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open a video writer ({video_codec()})")
    return writer
