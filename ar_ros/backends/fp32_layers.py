"""Which convolutions of a reduced-precision network stay in fp32, and the wrapper that runs them so.

One rule for every reduced precision (fp16 on CUDA or CPU, bf16 on CPU): a half-width float moves boxes
where a layer's numbers are ill-conditioned for it, and only there.

- The corner heads' score convolutions (what the head lists in ``score_convs()``):
  their output is the map the soft-argmax takes an expectation over; its rounding moves corners directly
  (one 1x1 convolution to one channel: no measurable time in fp32).
- Convolutions with *wide* folded weights or biases: folding a BatchNorm with a near-zero variance
  leaves weights ~100 and biases ~2e3 (two early MobileNetV2 layers of the shipped model) whose products
  cancel to a pre-activation in ReLU6's 0..6. fp16's step at 2e3 is 1 (bf16's is 8), as wide as that
  range, so the layer's output is mostly rounding.
- With ``stem``, the backbone's leading convolutions that int8 keeps in fp32 as well
  (``BackboneSpec.int8_fp32_convs``: MobileNetV2's stem and first depthwise convolution), whose rounding
  every later layer inherits; fp16 keeps them (``backends/half.py``), bf16 does not.

:func:`fp32_convolutions` says which; :class:`Float32` runs one in fp32 inside a reduced-precision network.
"""
from __future__ import annotations

from typing import List, Optional, Protocol, Set, TypeVar, cast

import torch
from torch import nn

#: A network changed in place and returned: the caller gets back the type it passed.
ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: Convolutions whose largest folded |weight| (and, where the precision rounds biases, |bias|) exceeds
#: this run in fp32.
FP32_WEIGHT_LIMIT = 32.0


class ScoredHead(Protocol):
    """A corner head that says which of its convolutions make the score maps (``CornerHead``, the merged CPU
    head)."""

    def score_convs(self) -> List[nn.Conv2d]: ...


def score_convolutions(head: Optional[nn.Module]) -> List[nn.Conv2d]:
    """The convolutions of a corner head whose outputs are score maps (the soft-argmax's input)."""
    return list(cast(ScoredHead, head).score_convs()) if head is not None else []


def is_wide(conv: nn.Conv2d, limit: float = FP32_WEIGHT_LIMIT, bias: bool = True) -> bool:
    """Whether ``conv``'s folded weights (and with ``bias`` its bias) exceed ``limit`` in magnitude."""
    big = float(conv.weight.detach().abs().max()) > limit
    if bias and conv.bias is not None:
        big = big or float(conv.bias.detach().abs().max()) > limit
    return big


def stem_convolutions(net: nn.Module) -> List[nn.Conv2d]:
    """The leading convolutions of ``net``'s backbone that stay in fp32 (``BackboneSpec.int8_fp32_convs``)."""
    from ..model.backbone import BACKBONES
    config = getattr(net, "config", None)
    extractor = getattr(net, "feature_extractor", None)
    if config is None or extractor is None:
        return []
    count = BACKBONES[config.backbone].int8_fp32_convs
    return [m for m in extractor.modules() if isinstance(m, nn.Conv2d)][:count]


def fp32_convolutions(net: nn.Module, head: Optional[nn.Module] = None, limit: float = FP32_WEIGHT_LIMIT,
                      bias: bool = True, stem: bool = False) -> Set[nn.Conv2d]:
    """The convolutions of ``net`` that a reduced-precision copy keeps in fp32: the score convolutions of
    ``head`` (default ``net.corner_head``), the wide ones (:func:`is_wide`; ``bias=False`` where the
    precision adds biases in fp32 anyway) and with ``stem`` the backbone's leading ones
    (:func:`stem_convolutions`). A ``limit`` of ``inf`` and no ``stem`` keep the score convolutions only."""
    head = head if head is not None else getattr(net, "corner_head", None)
    keep = set(score_convolutions(head))
    keep.update(m for m in net.modules() if isinstance(m, nn.Conv2d) and is_wide(m, limit, bias))
    if stem:
        keep.update(stem_convolutions(net))
    return keep


class Float32(nn.Module):
    """Runs ``module`` in fp32 on a reduced-precision input; the output stays fp32 (``out_dtype`` None: a
    score map, for the soft-argmax) or is cast back to ``out_dtype`` for the layers after it."""

    def __init__(self, module: nn.Module, out_dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.module = module.float()
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.float())
        return y if self.out_dtype is None else y.to(self.out_dtype)


def cast_keeping_fp32(net: ModuleT, dtype: torch.dtype, keep: Set[nn.Conv2d]) -> ModuleT:
    """Cast ``net`` to ``dtype`` in place, each convolution of ``keep`` wrapped in :class:`Float32` (its
    fp32 weights as they were, not rounded; score convolutions of the corner head return fp32) and the
    quality head, where there is one, left in fp32."""
    scores = set(score_convolutions(getattr(net, "corner_head", None)))
    originals = {m: m.float() for m in keep}  # the modules themselves: .to(dtype) below skips them once wrapped
    for parent in list(net.modules()):
        for name, child in list(parent._modules.items()):
            if child in originals:
                parent._modules[name] = Float32(originals[child], None if child in scores else dtype)
    # cast everything else; the wrapped convolutions are cast too by Module.to, so restore them after
    weights = {m: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
               for m in originals}
    net.to(dtype)
    with torch.no_grad():
        for m, (w, b) in weights.items():
            m.weight.data = w
            if b is not None and m.bias is not None:  # b is m's own bias, cloned above
                m.bias.data = b
    quality = getattr(net, "quality_head", None)
    if quality is not None:  # a few small layers on box coordinates and probabilities: fp32 costs nothing
        quality.float()
    return net
