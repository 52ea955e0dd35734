"""Corner head (two conv towers + soft-argmax) and the U-Net style mask head."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .neck import conv_bn_relu


def soft_argmax(score_map: torch.Tensor, stride: float) -> tuple:
    """Expected (x, y) of a softmax over a (B,1,H,W) score map, plus the probability map.

    Coordinates are cell index x stride (the authors' convention: cell corners, not centres),
    so a 16x16 map with stride 16 covers 0..240 px.
    """
    b, _, h, w = score_map.shape
    prob = torch.softmax(score_map.reshape(b, h * w).float(), dim=1)
    ys = torch.arange(h, device=score_map.device, dtype=prob.dtype).repeat_interleave(w) * stride
    xs = torch.arange(w, device=score_map.device, dtype=prob.dtype).repeat(h) * stride
    return prob @ xs, prob @ ys, prob.reshape(b, h, w)


def peak_mass(prob: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Probability mass in the (2r+1)^2 window around each map's arg-max: 1 = one sharp peak."""
    window = F.avg_pool2d(prob.unsqueeze(1), 2 * radius + 1, stride=1, padding=radius,
                          count_include_pad=True) * (2 * radius + 1) ** 2
    return window.flatten(1).max(dim=1).values.clamp(0.0, 1.0)


class CornerHead(nn.Module):
    """Top-left and bottom-right towers: 4 x [3x3 conv-BN-ReLU] (64->256->128->64->32) + 1x1 conv."""

    def __init__(self, inplanes: int = 64, channel: int = 256, stride: float = 16.0) -> None:
        super().__init__()
        self.stride = stride
        widths = (inplanes, channel, channel // 2, channel // 4, channel // 8)
        for corner in ("tl", "br"):
            for i in range(4):
                setattr(self, f"conv{i + 1}_{corner}", nn.Sequential(*conv_bn_relu(widths[i], widths[i + 1], 3)))
            setattr(self, f"conv5_{corner}", nn.Conv2d(widths[4], 1, kernel_size=1))

    def _tower(self, x: torch.Tensor, corner: str) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"conv{i}_{corner}")(x)
        return x

    def forward(self, feat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Return ``boxes`` (B,4) x1,y1,x2,y2 in crop pixels and ``score`` (B,) peak sharpness."""
        x1, y1, prob_tl = soft_argmax(self._tower(feat, "tl"), self.stride)
        x2, y2, prob_br = soft_argmax(self._tower(feat, "br"), self.stride)
        score = torch.sqrt(peak_mass(prob_tl) * peak_mass(prob_br))
        return {"boxes": torch.stack((x1, y1, x2, y2), dim=1), "score": score}


def _two_convs(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 conv -> ReLU -> 3x3 conv -> ReLU, biases, no BN (checkpoint indices 0 and 2)."""
    return nn.Sequential(nn.Conv2d(in_ch, mid_ch, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))


class MaskHead(nn.Module):
    """Refinement decoder: fused feature (1/16) merged with adjusted layer2, layer1 and conv1 features.

    At each level the coarse path (h*) is upsampled bilinearly and added to the skip path (v*),
    then a post conv narrows the channels. Output: (B,1,S,S) probabilities.
    """

    def __init__(self, feat_channels: int = 64) -> None:
        super().__init__()
        self.v0 = _two_convs(64, 16, 4)
        self.v1 = _two_convs(256, 64, 16)
        self.v2 = _two_convs(512, 128, 32)
        self.h2 = _two_convs(feat_channels, 32, 32)
        self.h1 = _two_convs(16, 16, 16)
        self.h0 = _two_convs(4, 4, 4)
        self.post0 = nn.Conv2d(32, 16, 3, padding=1)
        self.post1 = nn.Conv2d(16, 4, 3, padding=1)
        self.post2 = nn.Conv2d(4, 1, 3, padding=1)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, feat: torch.Tensor, conv1: torch.Tensor, layer1: torch.Tensor,
                layer2: torch.Tensor, out_size: int) -> torch.Tensor:
        x = self.post0(self._up(self.h2(feat), layer2) + self.v2(layer2))
        x = self.post1(self._up(self.h1(x), layer1) + self.v1(layer1))
        x = self.post2(self._up(self.h0(x), conv1) + self.v0(conv1))
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x)
