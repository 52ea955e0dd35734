"""Crops on the device: every target's window of a frame cut, resized and normalised in one batched gather.

On a GPU, cutting each target's crop with OpenCV on the host and uploading the crops costs more than the
network's pass. :class:`DeviceCropper` uploads the frame once (through a pinned staging buffer, without
blocking) and samples all windows at once on the device, with the geometry of ``engine/crop.py``:

- ``clean``: crop pixel ``u`` samples frame ``x0 + (u + 0.5) * sx - 0.5`` bilinearly, 0 outside the frame
  (``cv2.warpAffine`` with ``WARP_INVERSE_MAP`` and a constant border);
- ``exact``: the integer window (``ix1``, ``ws``) resized with half-pixel centres, coordinates clamped to
  the window (``cv2.resize`` INTER_LINEAR), the window's pixels outside the frame black, and the authors'
  right/bottom off-by-one: the frame's last column and row read as black.

The per-axis taps and weights are computed on the host in float64 (two (B,S) arrays per axis, a few KB);
the device does one gather per tap, rounds to integer levels as OpenCV's uint8 output does, and normalises
with the ImageNet statistics (``crop.normalisation_table``'s values, computed in float32 here).

Tolerance against the OpenCV crops (``test/test_device_crop.py``: synthetic frames, 400 windows of 4 to
300 px enlarged 1.5-5x, inside, across and outside the frame's borders, both crop sizes): OpenCV
interpolates uint8 in fixed point (``warpAffine``: positions to 1/32 px; ``resize``: 11-bit weights),
this module in float32 from float64 positions, so a pixel can round to the next level. Bound: at most 1
level at any pixel in either mode; on average under 0.1 level (exact mode near scale 1, where ``resize``'s
11-bit weights round differently on up to ~8% of the pixels; ~0.03 over random windows, ~0 in clean
mode); pixels of equal level normalise to within 1e-6 of the lookup table. A trained network does not
see the difference (the shipped model's boxes: < 0.001 px); a random-weight one can (0.6 px).

:func:`to_host` brings a pass's outputs back with one synchronisation: every tensor copied without blocking
into pinned memory (masks as fp16), then one wait.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import crop as cropping

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def axis_taps(origin: float, step: float, size: int, mode: str, start: int = 0, extent: int = 0,
              length: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, crop pixels 0..size-1 -> (first tap, second tap, their weights) with the weight of
    a tap outside the readable frame (``0..length-1``; ``length-2`` in exact mode) set to 0.

    ``clean``: pixel ``u`` samples ``origin + (u + 0.5) * step - 0.5``. ``exact``: the window
    ``start .. start + extent - 1`` resized to ``size``, position ``(u + 0.5) * extent / size - 0.5``
    clamped to the window, then offset by ``start``.
    """
    u = np.arange(size, dtype=np.float64)
    if mode == "exact":
        pos = np.clip((u + 0.5) * (extent / size) - 0.5, 0.0, extent - 1.0)
        first = np.floor(pos)
        frac = pos - first
        second = np.minimum(first + 1, extent - 1)
        first, second = first + start, second + start
        last = length - 2  # the authors' off-by-one: the last column / row is padding
    else:
        pos = origin + (u + 0.5) * step - 0.5
        first = np.floor(pos)
        frac = pos - first
        second = first + 1
        last = length - 1
    w0 = (1.0 - frac) * ((first >= 0) & (first <= last))
    w1 = frac * ((second >= 0) & (second <= last))
    return (np.clip(first, 0, length - 1).astype(np.int32), np.clip(second, 0, length - 1).astype(np.int32),
            w0, w1)


def window_taps(windows: Sequence[cropping.CropWindow], height: int, width: int) -> np.ndarray:
    """(B, 2 axes (y, x), 4 (tap0, tap1, w0, w1), S) float64 sampling table of the windows on a frame."""
    size = windows[0].size
    out = np.empty((len(windows), 2, 4, size), dtype=np.float64)
    for i, w in enumerate(windows):
        if w.size != size:
            raise ValueError("all windows of one batch must have the same crop size")
        out[i, 0] = axis_taps(w.y0, w.sy, size, w.mode, w.iy1, w.hs, height)
        out[i, 1] = axis_taps(w.x0, w.sx, size, w.mode, w.ix1, w.ws, width)
    return out


class _Staging:
    """A reusable pinned host buffer for host -> device copies that do not block the host; it is refilled
    only after the device has read its previous content (an event per copy)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffer: Optional[torch.Tensor] = None
        self.event: Optional[torch.cuda.Event] = None

    def upload(self, array: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(array))
        dtype = torch.from_numpy(array[:0].reshape(-1)).dtype
        if self.buffer is None or self.buffer.numel() < array.size or self.buffer.dtype != dtype:
            if self.event is not None:
                self.event.synchronize()
            self.buffer = torch.empty(max(array.size, 1), dtype=dtype, pin_memory=True)
        elif self.event is not None:
            self.event.synchronize()  # the previous copy has been read (usually long done)
        view = self.buffer[:array.size]
        view.numpy()[...] = array.reshape(-1)
        on_device = view.to(self.device, non_blocking=True).view(array.shape)
        self.event = torch.cuda.Event()
        self.event.record(torch.cuda.current_stream(self.device))
        return on_device


class DeviceCropper:
    """Drop-in for :class:`~ar_ros.engine.batch.CropBatcher` on a GPU (works on CPU too, for tests):
    ``cropper(frame, windows, color)`` -> (B,3,S,S) normalised crops of ``dtype`` in ``memory_format`` on
    ``device``, the frame uploaded once."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format = torch.channels_last) -> None:
        self.device, self.dtype, self.memory_format = device, dtype, memory_format
        std = np.array(STD, dtype=np.float64)
        self._scale = torch.tensor(1.0 / (255.0 * std), dtype=torch.float32, device=device)
        self._shift = torch.tensor(-np.array(MEAN) / std, dtype=torch.float32, device=device)
        self._frames, self._taps = _Staging(device), _Staging(device)

    def upload(self, frame: np.ndarray) -> torch.Tensor:
        """The HxWx3 uint8 frame on the device (pinned staging, non-blocking on a GPU)."""
        return self._frames.upload(frame)

    def __call__(self, frame: np.ndarray, windows: List[cropping.CropWindow], color: str = "rgb",
                 on_device: Optional[torch.Tensor] = None) -> torch.Tensor:
        height, width = frame.shape[:2]
        pixels = (on_device if on_device is not None else self.upload(frame)).reshape(height * width, 3)
        taps = self._taps.upload(window_taps(windows, height, width).astype(np.float32))
        rows, cols = taps[:, 0], taps[:, 1]                        # (B, 4, S) each
        terms = []
        for ry, wy in ((rows[:, 0], rows[:, 2]), (rows[:, 1], rows[:, 3])):
            for cx, wx in ((cols[:, 0], cols[:, 2]), (cols[:, 1], cols[:, 3])):
                index = ry.int()[:, :, None] * width + cx.int()[:, None, :]  # (B,S,S) int32
                values = pixels.index_select(0, index.reshape(-1)).reshape(*index.shape, 3).float()
                terms.append(values * (wy[:, :, None] * wx[:, None, :])[..., None])
        levels = torch.round(terms[0] + terms[1] + terms[2] + terms[3])  # OpenCV's uint8 output
        if color == "bgr":
            levels = levels.flip(-1)
        batch = (levels * self._scale + self._shift).permute(0, 3, 1, 2)  # NHWC memory = channels_last
        return batch.to(dtype=self.dtype, memory_format=self.memory_format)


def to_host(outputs: Dict[str, torch.Tensor], keys: Sequence[str],
            half: Sequence[str] = ("mask", "mask_logits")) -> Dict[str, np.ndarray]:
    """``outputs[k]`` for ``keys`` as float32 numpy arrays with one synchronisation: on a GPU each is copied
    without blocking into pinned host memory (the ``half`` ones as fp16: a mask needs no more), then one
    wait; on the host they are returned as they are (float32)."""
    if not any(outputs[k].is_cuda for k in keys):
        return {k: outputs[k].float().numpy() for k in keys}
    tensors = {k: outputs[k].half() if k in half else outputs[k].float() for k in keys}
    host = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in tensors.items()}
    for k, t in tensors.items():
        host[k].copy_(t, non_blocking=True)
    torch.cuda.current_stream(next(iter(tensors.values())).device).synchronize()
    return {k: v.float().numpy() for k, v in host.items()}
