"""Template kernel, pixel-wise correlation and the post-correlation fusion ("PtCorr" neck)."""
from __future__ import annotations

import torch
from torch import nn


def template_kernel(template_feat: torch.Tensor) -> torch.Tensor:
    """Cut the central half window of a template feature map and return it as a (B, cells, C) kernel.

    With 256 px crops and stride 16 this is the authors' fixed 8x8 window (rows/cols 4..11): the
    template crop is centred on the target with area factor 2, so the target fills the centre half.
    Cells are ordered row-major, which fixes the channel order of the correlation output.
    """
    c, h, w = (int(v) for v in template_feat.shape[1:])  # ints: constants in an exported graph
    top, left = h // 4, w // 4
    window = template_feat[:, :, top:top + h // 2, left:left + w // 2]
    return window.reshape(-1, c, (h // 2) * (w // 2)).transpose(1, 2).contiguous()


def pixel_correlation(kernel: torch.Tensor, search_feat: torch.Tensor) -> torch.Tensor:
    """Dot product of every template cell with every search position: (B,K,C) x (B,C,H,W) -> (B,K,H,W).

    No normalisation, scaling or bias, as in the authors' network.
    """
    # sizes as ints, the batch as -1: an exported graph then reshapes by constants (no shape arithmetic)
    c, h, w, k = (int(v) for v in (*search_feat.shape[1:], kernel.shape[1]))
    return torch.bmm(kernel, search_feat.reshape(-1, c, h * w)).reshape(-1, k, h, w)


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 1) -> list:
    """[conv (with bias) -> BN -> ReLU] as a flat module list (checkpoint indices 0/1/2)."""
    return [nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=True),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool -> fc1 -> ReLU -> fc2 -> sigmoid -> rescale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * weights


class CorrelationNeck(nn.Module):
    """Correlation output (one channel per template cell) -> 3 x [1x1 conv-BN-ReLU] -> SE."""

    def __init__(self, cells: int = 64, out_channels: int = 64) -> None:
        super().__init__()
        self.post_corr = nn.Sequential(*conv_bn_relu(cells, 128), *conv_bn_relu(128, 128),
                                       *conv_bn_relu(128, out_channels))
        self.channel_attention = SqueezeExcitation(out_channels, reduction=4)

    def forward(self, kernel: torch.Tensor, search_feat: torch.Tensor) -> torch.Tensor:
        return self.channel_attention(self.post_corr(pixel_correlation(kernel, search_feat)))
