"""The Alpha-Refine network: backbone, correlation neck, corner head and mask head.

Module names equal the authors' checkpoint keys (``feature_extractor``, ``neck``, ``corner_head``,
``mask_head``, ``feat_adjust``), so their AR34 c+m weights load with ``strict=True``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Tuple

import torch
from torch import nn

from .backbone import BACKBONES
from .heads import MASK_HEADS, CornerHead, MaskHead
from .neck import CorrelationNeck, conv_bn_relu, template_kernel
from .quality import OUTPUTS as QUALITY_OUTPUTS, QualityHead

STRIDE = 16  # layer3 stride; the crop size must be a multiple of 2 * STRIDE


@dataclass(frozen=True)
class NetConfig:
    """What is needed to rebuild a network and use it the way it was trained."""

    depth: int = 34
    input_size: int = 256
    search_factor: float = 2.0
    with_top: bool = True          # keep layer4 + fc (authors' layout); our own models drop them
    crop_mode: str = "exact"       # the crop the weights were trained with: "exact" | "clean"
    backbone: str = "resnet"       # a key of model.backbone.BACKBONES; depth and with_top are ResNet's only
    corner_stride: int = 16        # 16: the authors' corner head; 8: ours, refined on the stride-8 map
    mask_head: str = "authors"     # model.heads.MASK_HEADS: "authors" | "slim" / "slim4" (ours, ~1/15 the work)
    quality_head: bool = False     # model.quality.QualityHead: search also predicts its box's IoU (ours)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if not BACKBONES[self.backbone].uses_depth:  # one spelling per network, so configs compare equal
            object.__setattr__(self, "depth", 0)
            object.__setattr__(self, "with_top", False)
        if self.input_size % (2 * STRIDE) or self.input_size < 4 * STRIDE:
            raise ValueError(f"input_size must be a multiple of {2 * STRIDE} and >= {4 * STRIDE}, "
                             f"got {self.input_size}")
        if self.crop_mode not in ("exact", "clean"):
            raise ValueError(f"crop_mode must be 'exact' or 'clean', got {self.crop_mode!r}")
        if self.corner_stride not in (8, STRIDE):
            raise ValueError(f"corner_stride must be 8 or {STRIDE}, got {self.corner_stride!r}")
        if self.mask_head not in MASK_HEADS:
            raise ValueError(f"mask_head must be one of {sorted(MASK_HEADS)}, got {self.mask_head!r}")
        if not self.search_factor > 1.0:
            raise ValueError(f"search_factor must be > 1, got {self.search_factor}")

    @property
    def backbone_title(self) -> str:
        """The backbone in words, e.g. ``ResNet-18`` or ``MobileNetV2``."""
        return BACKBONES[self.backbone].title.format(depth=self.depth)

    @property
    def channels(self) -> Dict[str, int]:
        """Widths of the backbone maps ``conv1``, ``layer1``, ``layer2``, ``layer3`` (the kernel's)."""
        return BACKBONES[self.backbone].channels(self.depth)

    @property
    def feat_size(self) -> int:
        return self.input_size // STRIDE

    def to_dict(self) -> Dict[str, Any]:
        """The fields, without the later ones (:data:`LATER_FIELDS`) where they hold their defaults, so a
        network without the newer parts keeps the config (and the checkpoints, ONNX manifests and bf16
        verdict keys made from it) that older ar_ros versions write and read."""
        data = asdict(self)
        for name in LATER_FIELDS:
            if data[name] == NetConfig.__dataclass_fields__[name].default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "NetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network config keys {sorted(unknown)}")
        return cls(**data)


#: Config fields added after checkpoint format version 1 was fixed (written only when not at their default).
LATER_FIELDS = ("corner_stride", "mask_head", "quality_head")

#: The authors' released AR34 "c+m" refiner.
AUTHORS_CONFIG = NetConfig()


class AlphaRefineNet(nn.Module):
    """Siamese refiner. ``template`` caches a kernel per target; ``search`` refines a batch of crops."""

    def __init__(self, config: NetConfig = AUTHORS_CONFIG) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = BACKBONES[config.backbone].build(config.depth, config.with_top)
        ch = self.feature_extractor.channels
        cells = (config.feat_size // 2) ** 2
        self.neck = CorrelationNeck(cells=cells, out_channels=64)
        self.corner_head = CornerHead(inplanes=64, channel=256, stride=float(STRIDE),
                                      fine_channels=ch["layer2"] if config.corner_stride == 8 else 0)
        self.mask_head = MaskHead(feat_channels=64, kind=config.mask_head)
        self.feat_adjust = nn.ModuleList([  # a level the decoder does not have (width 0): passed through, unused
            nn.Sequential(*conv_bn_relu(ch[name], width)) if width else nn.Identity()
            for name, width in zip(("conv1", "layer1", "layer2"), MASK_HEADS[config.mask_head][0])])
        # a separate branch after the box: the box and mask outputs are the same with or without it
        self.quality_head = QualityHead(64, config.input_size, config.search_factor, corner_stride=config.corner_stride,
                                        stride=STRIDE) if config.quality_head else None

    def template(self, images: torch.Tensor) -> torch.Tensor:
        """Template crops (B,3,S,S) -> correlation kernels (B, cells, C). Compute once per target."""
        return template_kernel(self.feature_extractor(images, ("layer3",))["layer3"])

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        """Search crops (B,3,S,S) + kernels (B,cells,C) -> ``boxes`` (B,4 xyxy px), ``score`` (B,), ``mask``;
        with a quality head also ``quality`` and ``base_quality`` (B,): the predicted IoU of ``boxes`` (of
        the box the default box mode makes from them) and of the base box with the true box.

        The mask branch (and the low-level features it needs) only runs when ``with_mask``; with
        ``mask_logits`` as well, it stops before its last upsampling: ``mask_logits`` (B,1,S/2,S/2; S/4 for the
        "slim4" decoder) instead of
        ``mask`` (``MaskHead.forward``; what a box from the mask needs, ``engine.masks.logits_mask_box``).
        """
        fine = self.config.corner_stride != STRIDE
        names = ("conv1", "layer1", "layer2", "layer3") if with_mask else ("layer2", "layer3") if fine else ("layer3",)
        feats = self.feature_extractor(images, names)
        fused = self.neck(kernels, feats["layer3"])
        out = self.corner_head(fused, feats["layer2"] if fine else None)
        corner_prob = out.pop("corner_prob")
        if self.quality_head is not None:
            out.update(self.quality_head(fused, out["boxes"], out["score"], corner_prob))
        if with_mask:
            adj = [m(feats[n]) for m, n in zip(self.feat_adjust, ("conv1", "layer1", "layer2"))]
            key = "mask_logits" if mask_logits else "mask"
            out[key] = self.mask_head(fused, *adj, out_size=images.shape[-1], logits=mask_logits)
        return out

    def forward(self, template_images: torch.Tensor, search_images: torch.Tensor,
                with_mask: bool = True) -> Dict[str, torch.Tensor]:
        """Training / export entry: both branches in one call."""
        return self.search(search_images, self.template(template_images), with_mask=with_mask)


class SearchTensors(nn.Module):
    """``net.search`` with a tuple of tensors as output, ``(boxes, score[, mask or mask_logits][, quality,
    base_quality])`` (:attr:`output_names`; the quality pair where the network has a quality head): what
    tracers take (the ONNX exporter, TorchScript for the CPU graphs)."""

    def __init__(self, net: AlphaRefineNet, with_mask: bool, mask_logits: bool = False) -> None:
        super().__init__()
        self.net, self.with_mask, self.mask_logits = net, with_mask, mask_logits
        names = ["boxes", "score"] + (["mask_logits" if mask_logits else "mask"] if with_mask else [])
        if getattr(net, "quality_head", None) is not None:
            names += list(QUALITY_OUTPUTS)
        self.output_names: Tuple[str, ...] = tuple(names)

    def forward(self, images: torch.Tensor, kernels: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.net.search(images, kernels, with_mask=self.with_mask, mask_logits=self.mask_logits)
        return tuple(out[name] for name in self.output_names)
