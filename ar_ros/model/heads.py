"""Corner head (two conv towers + soft-argmax) and the U-Net style mask head."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from .neck import conv_bn_relu


def soft_argmax(score_map: torch.Tensor, stride: float, offset: float = 0.0) -> tuple:
    """Expected (x, y) of a softmax over a (B,1,H,W) score map, plus the probability map.

    Coordinates are cell index x stride + ``offset`` (the authors' convention, offset 0: cell corners,
    not centres), so a 16x16 map with stride 16 covers 0..240 px.
    """
    # sizes as ints, the batch as -1: in an exported or traced graph the grids are constants, not arithmetic
    # on the input's shape (about a hundred small ONNX nodes in the corner head otherwise)
    h, w = int(score_map.shape[-2]), int(score_map.shape[-1])
    prob = torch.softmax(score_map.reshape(-1, h * w).float(), dim=1)
    ys = torch.arange(h, device=score_map.device, dtype=prob.dtype).repeat_interleave(w) * stride + offset
    xs = torch.arange(w, device=score_map.device, dtype=prob.dtype).repeat(h) * stride + offset
    return prob @ xs, prob @ ys, prob.reshape(-1, h, w)


def peak_mass(prob: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Probability mass in the (2r+1)^2 window around each map's arg-max: 1 = one sharp peak."""
    window = F.avg_pool2d(prob.unsqueeze(1), 2 * radius + 1, stride=1, padding=radius,
                          count_include_pad=True) * (2 * radius + 1) ** 2
    return window.flatten(1).max(dim=1).values.clamp(0.0, 1.0)


def upsample2(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` bilinearly upsampled to ``like``'s size, twice its own (every map of the heads is twice the
    size of the next coarser one: the crop size is a multiple of 32), in ``like``'s memory layout.

    A constant scale, not ``like``'s size: an exported graph then has no shape arithmetic (the same pixels:
    PyTorch and ONNX map coordinates by the scale either way). The layout: oneDNN Graph (engine/graphs.py)
    crashes the process on a sum of an upsampled map and a convolution's output in two layouts (torch
    2.13); eager, the copy is a no-op.
    """
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    layout = torch.channels_last if like.is_contiguous(memory_format=torch.channels_last) and \
        not like.is_contiguous() else torch.contiguous_format
    return up.contiguous(memory_format=layout)


class FineCorner(nn.Module):
    """One tower's stride-8 refinement (ours; the authors' head stops at stride 16).

    The tower's last 32-channel map is upsampled 2x and added to the backbone's stride-8 map (1x1 conv),
    a 3x3 conv mixes them, and a 1x1 conv adds a correction to the 2x-upsampled coarse score map. The
    correction starts at zero, so a fine head initialised from a coarse one first scores what the coarse
    head scores (bilinearly upsampled).
    """

    def __init__(self, fine_channels: int, width: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(*conv_bn_relu(fine_channels, width)[:2])  # conv + BN, ReLU after the sum
        self.mix = nn.Sequential(*conv_bn_relu(width, width, 3))
        self.out = nn.Conv2d(width, 1, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(self.out.bias)

    def forward(self, tower: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        return self.scores(tower, coarse, fine, self.skip, self.mix, self.out)

    @staticmethod
    def scores(tower: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor, skip: nn.Module, mix: nn.Module,
               out: nn.Module) -> torch.Tensor:
        """The fine score map(s) from the given layers (also the two towers' at once, merged by channel)."""
        up = upsample2(tower, fine)
        x = mix(F.relu(skip(fine) + up))
        return upsample2(coarse, fine) + out(x)


def map_grid(stride: float, fine: bool) -> Tuple[float, float]:
    """``(step, offset)``: crop px of corner-map cell j is ``j * step + offset`` (the stride-16 map: the
    authors' cell corners; the stride-8 map: a cell j of the 2x-upsampled map sits at coarse cell
    (j + 0.5) / 2 - 0.5, i.e. at j x s/2 - s/4)."""
    return (stride / 2, -stride / 4) if fine else (stride, 0.0)


def corner_boxes(score_tl: torch.Tensor, score_br: torch.Tensor, stride: float, fine: bool) -> Dict[str, torch.Tensor]:
    """``boxes`` (B,4) x1,y1,x2,y2 in crop pixels and ``score`` (B,) peak sharpness from the two corner
    score maps; ``fine``: the maps are the stride-8 ones (2x the coarse map's resolution). Also
    ``corner_prob`` (B,2,H,W): the two softmax maps the corners are the expectations of (what the quality
    head reads; ``AlphaRefineNet.search`` does not return it)."""
    step, offset = map_grid(stride, fine)
    x1, y1, prob_tl = soft_argmax(score_tl, step, offset)
    x2, y2, prob_br = soft_argmax(score_br, step, offset)
    radius = 2 if fine else 1  # about the same window in crop px (40 vs 48 px)
    score = torch.sqrt(peak_mass(prob_tl, radius) * peak_mass(prob_br, radius))
    return {"boxes": torch.stack((x1, y1, x2, y2), dim=1), "score": score,
            "corner_prob": torch.stack((prob_tl, prob_br), dim=1)}


class CornerHead(nn.Module):
    """Top-left and bottom-right towers: 4 x [3x3 conv-BN-ReLU] (64->256->128->64->32) + 1x1 conv.

    With ``fine_channels`` (the width of the backbone's stride-8 map) each tower also has a
    :class:`FineCorner` and the soft-argmax runs on a map of twice the resolution (stride / 2).
    """

    def __init__(self, inplanes: int = 64, channel: int = 256, stride: float = 16.0, fine_channels: int = 0) -> None:
        super().__init__()
        self.stride = stride
        self.fine_channels = fine_channels
        widths = (inplanes, channel, channel // 2, channel // 4, channel // 8)
        for corner in ("tl", "br"):
            for i in range(4):
                setattr(self, f"conv{i + 1}_{corner}", nn.Sequential(*conv_bn_relu(widths[i], widths[i + 1], 3)))
            setattr(self, f"conv5_{corner}", nn.Conv2d(widths[4], 1, kernel_size=1))
            if fine_channels:
                setattr(self, f"fine_{corner}", FineCorner(fine_channels, widths[4]))

    def towers(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The top-left and bottom-right towers' layers in order (four conv-BN-ReLU blocks, then the 1x1
        score convolution): what a fuser that runs the two towers as one reads, instead of names."""
        return ([getattr(self, f"conv{i}_tl") for i in range(1, 6)], [getattr(self, f"conv{i}_br") for i in range(1, 6)])

    def fine_branches(self) -> Optional[Tuple["FineCorner", "FineCorner"]]:
        """The two stride-8 branches (top-left, bottom-right), or None for a stride-16 head."""
        if not self.fine_channels:
            return None
        return cast(FineCorner, self.fine_tl), cast(FineCorner, self.fine_br)  # set by name in __init__

    def score_convs(self) -> List[nn.Conv2d]:
        """The convolutions whose outputs are the score maps the soft-argmax takes its expectation over (kept
        in fp32 by the reduced precisions: their rounding moves boxes)."""
        (*_, tl), (*_, br) = self.towers()
        fine = self.fine_branches()
        # the towers end with their score convolutions (towers())
        return [cast(nn.Conv2d, tl), cast(nn.Conv2d, br)] + ([fine[0].out, fine[1].out] if fine else [])

    def _tower(self, x: torch.Tensor, corner: str, fine: Optional[torch.Tensor]) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"conv{i}_{corner}")(x)
        coarse = getattr(self, f"conv5_{corner}")(x)
        return coarse if fine is None else getattr(self, f"fine_{corner}")(x, coarse, fine)

    def forward(self, feat: torch.Tensor, fine: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Return ``boxes`` (B,4) x1,y1,x2,y2 in crop pixels and ``score`` (B,) peak sharpness.

        ``fine`` is the stride-8 backbone map; a head built with ``fine_channels`` needs it.
        """
        if bool(self.fine_channels) != (fine is not None):
            raise ValueError("the stride-8 map must be given exactly when the head has fine_channels")
        return corner_boxes(self._tower(feat, "tl", fine), self._tower(feat, "br", fine), self.stride,
                            fine is not None)


def _two_convs(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 conv -> ReLU -> 3x3 conv -> ReLU, biases, no BN (checkpoint indices 0 and 2)."""
    return nn.Sequential(nn.Conv2d(in_ch, mid_ch, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))


#: Mask decoders by name: widths of the adjusted conv1 / layer1 / layer2 skip maps and of the middle of
#: their v0 / v1 / v2 convolutions. "authors" is the authors' decoder (their checkpoints load into it);
#: "slim" (ours) keeps its coarse path and narrows the skips to about 1/19 of their multiply-adds (the whole
#: branch: about 1/15); "slim4" (ours) is "slim" ending at stride 4: no conv1 level (width 0), its last
#: convolution on the layer1 level's map, upsampled 4x.
MASK_HEADS = {"authors": ((64, 256, 512), (16, 64, 128)),
              "slim": ((16, 32, 64), (4, 16, 32)),
              "slim4": ((0, 32, 64), (0, 16, 32))}


class MaskHead(nn.Module):
    """Refinement decoder: fused feature (1/16) merged with adjusted layer2, layer1 and conv1 features.

    At each level the coarse path (h*) is upsampled bilinearly and added to the skip path (v*),
    then a post conv narrows the channels. Output: (B,1,S,S) probabilities. A decoder without the conv1
    level ("slim4") takes ``conv1`` but does not use it.
    """

    def __init__(self, feat_channels: int = 64, kind: str = "authors") -> None:
        super().__init__()
        (c0, c1, c2), (m0, m1, m2) = MASK_HEADS[kind]
        if c0:  # in the authors' order (their checkpoint's keys)
            self.v0 = _two_convs(c0, m0, 4)
        self.v1 = _two_convs(c1, m1, 16)
        self.v2 = _two_convs(c2, m2, 32)
        self.h2 = _two_convs(feat_channels, 32, 32)
        self.h1 = _two_convs(16, 16, 16)
        if c0:
            self.h0 = _two_convs(4, 4, 4)
        self.post0 = nn.Conv2d(32, 16, 3, padding=1)
        self.post1 = nn.Conv2d(16, 4, 3, padding=1)
        self.post2 = nn.Conv2d(4, 1, 3, padding=1)
        self.levels = 3 if c0 else 2

    def forward(self, feat: torch.Tensor, conv1: torch.Tensor, layer1: torch.Tensor,
                layer2: torch.Tensor, out_size: int, logits: bool = False) -> torch.Tensor:
        """(B,1,S,S) probabilities; with ``logits``, the last convolution's output instead: (B,1,S/2,S/2)
        (S/4 without the conv1 level), whose bilinear upsampling to S and sigmoid are the probabilities."""
        x = self.post0(upsample2(self.h2(feat), layer2) + self.v2(layer2))
        x = self.post1(upsample2(self.h1(x), layer1) + self.v1(layer1))
        if self.levels == 3:
            x = upsample2(self.h0(x), conv1) + self.v0(conv1)
        x = self.post2(x)
        if logits:
            return x
        x = F.interpolate(x, scale_factor=float(int(out_size) / int(x.shape[-1])), mode="bilinear",
                          align_corners=False)
        return torch.sigmoid(x)
