"""Eager PyTorch on any device: the reference backend, and the base of the tuned torch backends."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..model import AlphaRefineNet
from ..model.fuse import fold_batchnorm as fold_batchnorm_layers
from .base import SearchBackend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(SearchBackend):
    """``net.template`` / ``net.search`` as they are, on ``device`` in ``precision`` (fp32 or fp16).

    The network is the caller's own copy (it is changed in place): BatchNorm folded into the convolutions
    (``fold_batchnorm``, in fp32 before any cast), cast, moved, channels_last where asked.
    """

    name = "torch"

    def __init__(self, net: AlphaRefineNet, device: torch.device, precision: str = "fp32", channels_last: bool = True,
                 fold_batchnorm: bool = True, meta: Optional[Dict[str, Any]] = None, precision_note: str = "") -> None:
        net.eval()
        if fold_batchnorm:
            fold_batchnorm_layers(net)
        self.config = net.config
        self.meta = dict(meta or {})
        self.device = self.input_device = device
        self.precision = precision
        self.precision_note = precision_note or f"{precision}: as requested"
        self.input_dtype = DTYPES[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.quality = getattr(net, "quality_head", None) is not None
        # on a GPU, fused boxes take the decoder's logits (no full-size mask to upsample and copy back)
        self.mask_logits = device.type == "cuda"
        self.net = self.prepare(net)

    def prepare(self, net: AlphaRefineNet) -> AlphaRefineNet:
        """The network as this backend runs it (subclasses rewrite it for speed). fp16 (CUDA, or CPU to
        check its numerics) keeps the layers of :func:`~.half.to_fp16` in fp32."""
        if self.precision == "fp16":
            from .half import to_fp16
            # ignore (both lines): torch's stubs leave memory_format out of Module.to's overloads
            return to_fp16(net.to(self.device, memory_format=self.memory_format))  # type: ignore[call-overload]
        return net.to(self.device, dtype=self.input_dtype, memory_format=self.memory_format)  # type: ignore[call-overload]

    def template(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.template(images)

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        return self.net.search(images, kernels, with_mask=with_mask, mask_logits=mask_logits)
