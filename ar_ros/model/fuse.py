"""Fold inference-mode BatchNorm layers into the convolutions before them.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with
scaled weights and a shifted bias. Folding saves the BatchNorm passes over every feature map and
changes outputs only by float rounding (``benchmarks/bench_backends.py`` times the ``torch`` backend,
folded, against ``torch-plain``, unfolded). The folded
network is for inference only: its state_dict no longer has the ``bn`` keys of Appendix A, so
checkpoints are always saved and exported from the unfolded network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Protocol, runtime_checkable

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` (``bn`` in eval mode); ``bn`` must then be dropped."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    with torch.no_grad():
        dtype = conv.weight.dtype
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        conv.weight.copy_((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
        folded = (bn.bias.double() + (bias - bn.running_mean.double()) * scale).to(dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(folded, requires_grad=False)
        else:
            conv.bias.copy_(folded)


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of ``net`` in place; returns how many were folded.

    Three patterns are recognised, which cover the whole refiner: consecutive ``Conv2d``, ``BatchNorm2d``
    entries of an ``nn.Sequential``, sibling attributes ``convN`` / ``bnN`` (torchvision's ResNet
    naming), and the (conv, BN) attribute names a module lists in ``conv_bn_pairs`` (EfficientNet's
    ``_expand_conv`` / ``_bn0`` ...). The network must be in eval mode.
    """
    if net.training:
        raise ValueError("fold_batchnorm needs a network in eval mode")
    folded = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    fold_conv_bn(conv, bn)
                    module._modules[second] = nn.Identity()
                    folded += 1
            continue
        pairs = dict((bn, conv) for conv, bn in getattr(module, "conv_bn_pairs", ()))
        for name, child in list(module.named_children()):
            if not (isinstance(child, nn.BatchNorm2d) and (name.startswith("bn") or name in pairs)):
                continue
            paired = getattr(module, pairs.get(name, "conv" + name[2:]), None)
            if isinstance(paired, nn.Conv2d):
                fold_conv_bn(paired, child)
                setattr(module, name, nn.Identity())
                folded += 1
    return folded


def folded(*modules: Optional[nn.Module]) -> bool:
    """Whether these BatchNorm slots were folded away (None or Identity)."""
    return all(m is None or isinstance(m, nn.Identity) for m in modules)


@dataclass
class ResidualChain:
    """How a residual block computes, said by the block itself (its ``fusion()``), for a fuser that runs it as
    fewer, fused operations: the layers of ``body`` as they are, then ``convs`` one after another, each
    followed by its activation in ``acts`` ("relu", "relu6" or "none"), except that the last convolution's
    output is first added to the block's input (passed through ``downsample`` when there is one) and then
    activated. A block answers only once its BatchNorms are folded, so every convolution carries its bias."""

    convs: List[nn.Conv2d]
    acts: List[str]
    downsample: Optional[nn.Conv2d] = None
    body: nn.Sequential = field(default_factory=nn.Sequential)


@dataclass
class ConvAct:
    """A convolution followed by an activation ("relu", "relu6"), said by the module that holds them (e.g.
    the ResNet stem's ``stem_fusion()``), for a fuser that runs the two as one call."""

    conv: nn.Conv2d
    act: str


@runtime_checkable
class FusableBlock(Protocol):
    """A block that says how it computes (:class:`ResidualChain`), or None while it cannot be fused."""

    def fusion(self) -> Optional[ResidualChain]: ...


@runtime_checkable
class FusableStem(Protocol):
    """A backbone whose stem (a convolution + activation) can be run as one module it is given."""

    def stem_fusion(self) -> Optional[ConvAct]: ...

    def use_fused_stem(self, conv_act: nn.Module) -> None: ...
