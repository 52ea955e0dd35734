"""What the backbones share: their interface, weight initialisation, and returning named maps from a chain
of blocks."""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Union

import torch
from torch import nn


class Backbone(nn.Module):
    """What every backbone provides, so the neck and heads adapt to it: ``forward(x, outputs)`` returns the
    maps ``conv1`` / ``layer1`` / ``layer2`` / ``layer3`` (strides 2, 4, 8, 16) asked for, by name;
    ``channels`` holds their widths; :meth:`stage_modules` names the modules up to a map (to freeze them)."""

    channels: Dict[str, int]

    def stage_modules(self, last: str) -> List[nn.Module]:
        """The modules that compute every map up to and including ``last``."""
        raise NotImplementedError


def init_conv_bn(module: nn.Module) -> None:
    """He-normal convolutions (fan-out), BatchNorm as identity: torchvision's initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def stage_outputs(blocks: Union[nn.Sequential, nn.ModuleList], x: torch.Tensor, outputs: Sequence[str],
                  stage_ends: Mapping[str, int]) -> Dict[str, torch.Tensor]:
    """Run ``blocks`` up to the deepest requested map; the map named ``n`` is block ``stage_ends[n]``'s output."""
    unknown = set(outputs) - set(stage_ends)
    if unknown:
        raise ValueError(f"unknown backbone outputs {sorted(unknown)}")
    ends = {stage_ends[name]: name for name in outputs}
    feats: Dict[str, torch.Tensor] = {}
    for i in range(max(ends) + 1):
        x = blocks[i](x)
        if i in ends:
            feats[ends[i]] = x
    return feats
