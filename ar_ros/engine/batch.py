"""Crops of one frame as one normalised batch on the host, in the dtype and layout a backend takes them (a
GPU backend gets its crops from :mod:`.device_crop` instead)."""
from __future__ import annotations

from typing import List

import cv2
import numpy as np
import torch

from . import crop as cropping


class CropBatcher:
    """Cuts windows out of a frame with OpenCV and normalises them through one lookup table (ImageNet
    statistics, ``cv2.LUT``). Returns (B,3,S,S) of ``dtype`` in ``memory_format``, on the host."""

    def __init__(self, device: torch.device, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        if device.type != "cpu":
            raise ValueError(f"CropBatcher cuts crops on the host; on {device} use engine.device_crop.DeviceCropper")
        self.dtype, self.memory_format = dtype, memory_format
        table = cropping.normalisation_table()
        self._lut_cv = np.ascontiguousarray(table.T.reshape(1, 256, 3))  # per-channel table for cv2.LUT

    def __call__(self, frame: np.ndarray, windows: List[cropping.CropWindow], color: str) -> torch.Tensor:
        patches = np.stack([cropping.crop(frame, w) for w in windows])
        if color == "bgr":
            patches = patches[..., ::-1]
        b, s = patches.shape[:2]  # cv2.LUT: the same float32 values as a gather through the table, faster
        flat = cv2.LUT(np.ascontiguousarray(patches).reshape(b * s, s, 3), self._lut_cv).reshape(patches.shape)
        if self.memory_format == torch.contiguous_format:
            # NCHW in numpy: a torch copy of this permuted view wakes torch's thread pool, whose
            # spinning threads then slow an ONNX Runtime call that follows
            return torch.from_numpy(np.ascontiguousarray(flat.transpose(0, 3, 1, 2))).to(dtype=self.dtype)
        batch = torch.from_numpy(flat).permute(0, 3, 1, 2)
        # NHWC memory viewed as NCHW == channels_last
        return batch.to(dtype=self.dtype, memory_format=self.memory_format)
