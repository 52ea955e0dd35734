"""bf16 CPU inference: the network cast to bf16 except where bf16 moves boxes, its convolutions packed."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..fp32_layers import FP32_WEIGHT_LIMIT, cast_keeping_fp32, fp32_convolutions
from .packing import _merge_corner_towers, _pack_convolutions

if TYPE_CHECKING:
    from ...model import AlphaRefineNet


def _cast_bf16(net: nn.Module, fp32_bias: bool, fp32_weight_limit: float, merge_corner_towers: bool) -> dict:
    """Cast ``net`` to bf16 in place except its fp32 parts (see :func:`to_bf16`; the rule is
    :func:`~ar_ros.backends.fp32_layers.fp32_convolutions`, shared with fp16); returns the fp32 biases (by
    convolution) that the packed convolutions add, empty without ``fp32_bias``. Without fp32 biases,
    convolutions with a bias over the limit run in fp32 as well."""
    head = _merge_corner_towers(net) if merge_corner_towers else getattr(net, "corner_head", None)
    biases = {m: m.bias.detach().clone() for m in net.modules()
              if fp32_bias and isinstance(m, nn.Conv2d) and m.bias is not None}
    cast_keeping_fp32(net, torch.bfloat16, fp32_convolutions(net, head, fp32_weight_limit, bias=not fp32_bias))
    return biases


def to_bf16(net: AlphaRefineNet, fuse_blocks: bool = True, fp32_bias: bool = True,
            fp32_weight_limit: float = FP32_WEIGHT_LIMIT, merge_corner_towers: bool = True) -> AlphaRefineNet:
    """Cast a (folded, channels_last, CPU) network to bf16 for inference, in place, convolutions packed.

    Kept in fp32, where bf16 moves boxes:
    - the corner heads' last 1x1 convolution: its output is the score map the soft-argmax takes the
      expectation over (no measurable time);
    - with ``fp32_bias``, the biases of the convolutions (oneDNN adds them to its fp32 accumulator; the
      fused residual adds take bf16 ones): a folded BatchNorm can leave biases in the thousands, where
      bf16's step is 8;
    - convolutions whose folded weights exceed ``fp32_weight_limit`` in magnitude (a BatchNorm with a
      near-zero variance, where bf16's step moves pre-activations by more than ReLU6's range) run entirely
      in fp32, at the cost of their fp32 arithmetic and two casts.
    The measured effect of each choice is in docs/performance.md. The other convolutions are packed
    (:mod:`.packing`), with ``fuse_blocks`` the residual blocks run their adds and activations inside the
    convolutions, and with ``merge_corner_towers`` the corner head's two towers run as one.
    """
    biases = _cast_bf16(net, fp32_bias, fp32_weight_limit, merge_corner_towers)
    _pack_convolutions(net, fuse_blocks, biases)
    return net


def to_bf16_plain(net: AlphaRefineNet, fp32_weight_limit: float = FP32_WEIGHT_LIMIT) -> AlphaRefineNet:
    """A bf16 copy of a folded fp32 network with ordinary convolutions (what the graph fuser understands:
    aten convolutions take bf16 biases only), the same layers kept in fp32 as :func:`to_bf16`'s."""
    plain = copy.deepcopy(net)
    _cast_bf16(plain, False, fp32_weight_limit, True)
    return plain
