"""Crops of one frame as one normalised batch, in the dtype, layout and place a backend takes them."""
from __future__ import annotations

from typing import List

import cv2
import numpy as np
import torch

from . import crop as cropping


class CropBatcher:
    """Cuts windows out of a frame and normalises them through one lookup table (ImageNet statistics):
    ``cv2.LUT`` on the host, a gather on a GPU. Returns (B,3,S,S) of ``dtype`` in ``memory_format``."""

    def __init__(self, device: torch.device, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        self.device, self.dtype, self.memory_format = device, dtype, memory_format
        table = cropping.normalisation_table()
        self._lut = torch.from_numpy(table.reshape(-1)).to(device)
        self._lut_cv = np.ascontiguousarray(table.T.reshape(1, 256, 3))  # per-channel table for cv2.LUT

    def __call__(self, frame: np.ndarray, windows: List[cropping.CropWindow], color: str) -> torch.Tensor:
        patches = np.stack([cropping.crop(frame, w) for w in windows])
        if color == "bgr":
            patches = patches[..., ::-1]
        if self.device.type == "cpu":  # cv2.LUT: same float32 values as the gather below, ~40x faster on CPU
            b, s = patches.shape[:2]
            flat = cv2.LUT(np.ascontiguousarray(patches).reshape(b * s, s, 3), self._lut_cv).reshape(patches.shape)
            if self.memory_format == torch.contiguous_format:
                # NCHW in numpy: a torch copy of this permuted view wakes torch's thread pool, whose
                # spinning threads then slow an ONNX Runtime call that follows
                return torch.from_numpy(np.ascontiguousarray(flat.transpose(0, 3, 1, 2))).to(dtype=self.dtype)
            batch = torch.from_numpy(flat).permute(0, 3, 1, 2)
        else:  # upload uint8 and look up on the GPU
            idx = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device).long()
            idx += torch.arange(3, device=self.device) * 256
            batch = self._lut[idx].permute(0, 3, 1, 2)
        # NHWC memory viewed as NCHW == channels_last
        return batch.to(dtype=self.dtype, memory_format=self.memory_format)
