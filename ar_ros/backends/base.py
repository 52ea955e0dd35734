"""The one seam between the engine and the ways to run the network.

A backend turns normalised crops into template kernels and search outputs. The :class:`Refiner` builds
crops, keeps kernels, batches targets and gates results; it never knows which kernels ran. Each backend
declares what it can do as plain attributes, so callers never probe with ``getattr``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Sequence

import torch

from ..errors import ArRosError
from ..model import NetConfig


class BackendError(ArRosError, RuntimeError):
    """A backend cannot be built or run here (missing library, missing or stale model files)."""


class BackendRefused(ArRosError, ValueError):
    """A combination of weights, device, precision and backend that cannot run (the reason is the message)."""


class SearchBackend(ABC):
    """One way to run an Alpha-Refine network: ``template`` and ``search`` on batched crops.

    Inputs are (B,3,S,S) crops normalised with ImageNet statistics, of dtype :attr:`input_dtype` in
    :attr:`memory_format`, on :attr:`input_device`. ``search`` returns ``boxes`` (B,4) x1,y1,x2,y2 in crop
    pixels and ``score`` (B,), plus ``mask`` (B,1,S,S) probabilities when ``with_mask``, or ``mask_logits``
    (B,1,s,s) decoder logits before the last upsampling when ``mask_logits`` (only where
    :attr:`mask_logits` is true), plus ``quality`` and ``base_quality`` (B,) where :attr:`quality` is true.
    """

    name: str = ""                      # the backend's name in the options table, e.g. "torch"
    config: NetConfig                   # the network's config (crop size, crop mode, search factor, heads)
    meta: Dict[str, Any]                # where the weights came from, for ``info`` and logs
    device: torch.device = torch.device("cpu")   # where the network runs
    input_device: torch.device = torch.device("cpu")  # where the crops must be (CPU for ONNX Runtime)
    input_dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    precision: str = "fp32"             # what runs inside: fp32 | fp16 | bf16 | int8
    precision_note: str = ""            # why that precision (e.g. "auto on cpu: bf16 passed the gate")
    max_batch: int = 1 << 30            # the most crops one call takes (TensorRT engines have a maximum)
    mask_logits: bool = False           # search(..., mask_logits=True) is supported
    quality: bool = False               # search outputs carry "quality" and "base_quality"

    @abstractmethod
    def template(self, images: torch.Tensor) -> torch.Tensor:
        """Template kernels (B,C,k,k) of the target crops."""

    @abstractmethod
    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        """One batched search pass (see the class docstring for the outputs)."""

    def warm_up(self, batch_sizes: Sequence[int], with_mask: bool) -> None:
        """Build whatever this backend builds per shape (graphs, engines, algorithms) for these batch
        sizes now, so that no live frame pays for it. Default: nothing to build."""

    def close(self) -> None:
        """Let go of what the backend holds beyond its weights (threads, sessions). Default: nothing."""
