"""fp16 for the torch network: one layer choice on CUDA and on CPU.

:func:`to_fp16` casts a (BatchNorm-folded) network to float16 except the convolutions that
:func:`~ar_ros.backends.fp32_layers.fp32_convolutions` keeps in fp32 (``stem=True``): the corner heads'
score convolutions, the layers whose folded weights or biases are too wide for fp16 (fp16 rounds the
bias too, so both count) and the backbone's leading convolutions. On the shipped MobileNetV2 model that
is the stem, the first depthwise convolution, the first expansion (|w| 127, |b| 2e3) and the four score
maps; the rest (the correlation, the towers, the mask decoder) runs in fp16.

fp16 runs on CPU as well (slowly on x86 without fp16 arithmetic, natively on Arm CPUs such as a
Jetson's), which lets CI check the GPU's numerics without a GPU: ``test/test_fp16_cpu.py`` bounds the
shipped model's fp16 boxes against fp32 and shows that casting every layer (:func:`all_fp16`, the
previous choice) misses that bound.
"""
from __future__ import annotations

import torch

from .fp32_layers import FP32_WEIGHT_LIMIT, ModuleT, cast_keeping_fp32, fp32_convolutions


def to_fp16(net: ModuleT, weight_limit: float = FP32_WEIGHT_LIMIT, stem: bool = True) -> ModuleT:
    """Cast ``net`` (folded, on its device) to fp16 in place, keeping the fp32 layers; returns it.

    ``weight_limit=math.inf, stem=False`` keeps only the score convolutions in fp32 (for comparison).
    """
    keep = fp32_convolutions(net, limit=weight_limit, bias=True, stem=stem)
    return cast_keeping_fp32(net, torch.float16, keep)


def all_fp16(net: ModuleT) -> ModuleT:
    """Every layer in fp16 (the soft-argmax still takes its map in fp32): what :func:`to_fp16` replaces,
    kept for comparison in tests and the GPU check."""
    return net.half()
