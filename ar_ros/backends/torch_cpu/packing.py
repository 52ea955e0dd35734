"""fp32 / bf16 CPU inference with oneDNN: convolutions packed once, activations and residual adds fused into them.

Eager PyTorch hands oneDNN the weights in PyTorch's layout, which oneDNN reorders at every call, and runs
small convolutions (batch 1) through an im2col fallback. Packed convolutions reorder once and take the
activation and the residual add inside the same call. The private oneDNN operators used here appear nowhere
else in ar_ros.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, cast

import torch
from torch import nn

from ..fp32_layers import Float32 as _Float32  # the fp32 islands of a reduced-precision network

if TYPE_CHECKING:
    from ...model import AlphaRefineNet
    from ...model.heads import CornerHead


class _PackedConv(nn.Module):
    """A convolution whose weights oneDNN reorders once instead of at every call, an activation fused if asked.

    Eager PyTorch hands oneDNN the weights in PyTorch's layout and oneDNN reorders them into its blocked
    one on every call; for bf16 on CPU that reorder costs as much as a small layer's arithmetic.
    ``act`` is ``"relu"``, ``"relu6"`` (hardtanh 0..6) or ``"none"``. :meth:`add` also adds a residual
    inside the same oneDNN call (binary post-op), then applies ``act`` (``"relu"`` or ``"none"`` there):
    one pass over the output instead of three (convolution, add, ReLU), one rounding to bf16 instead of two.
    ``bias`` (the fp32 network's) replaces the bf16-rounded one in :meth:`forward`; the binary post-op
    takes only a bias of the input's dtype, so :meth:`add` uses the bf16 one.
    """

    def __init__(self, conv: nn.Conv2d, input_shape: list, act: str = "none",
                 bias: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight.detach(), *self.geometry[:3],
                                                                       conv.groups, input_shape)
        self.bias = None if conv.bias is None else conv.bias.detach()
        # the bias of the fp32 network when given (oneDNN adds an fp32 bias to its fp32 accumulator)
        self.bias_fp32 = self.bias if bias is None else bias.detach().float()
        self.attr, self.scalars = {"none": ("none", []), "relu": ("relu", []),
                                   "relu6": ("hardtanh", [0.0, 6.0])}[act]

    def __deepcopy__(self, memo: dict) -> "_PackedConv":
        """Copies share the packed weights: oneDNN's blocked tensor has no storage to copy, and inference
        never writes it (so ``Refiner(refiner.net)`` works on a packed network)."""
        new = self.__class__.__new__(self.__class__)
        new.__dict__ = {k: v.copy() if isinstance(v, dict) else v for k, v in self.__dict__.items()}
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias_fp32, *self.geometry, self.attr,
                                                       self.scalars, "")

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``act(conv(x) + residual)`` in one call (``residual`` in the output's shape, dtype and layout)."""
        unary = None if self.attr == "none" else self.attr
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, self.packed, self.bias, *self.geometry,
                                                              "add", None, unary, self.scalars, "")


class _FusedResidual(nn.Module):
    """A residual block as the block describes itself (``model.fuse.ResidualChain``), run as packed
    convolutions: its body as it is, each convolution with its activation inside the call, the last one
    with the residual add (and the activation after it) inside the call as well."""

    def __init__(self, body: nn.Sequential, convs: List[_PackedConv], downsample: Optional[_PackedConv]) -> None:
        super().__init__()
        self.body, self.convs, self.downsample = body, nn.ModuleList(convs), downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.body(x)
        *chain, last = self.convs
        for conv in chain:
            out = conv(out)
        return cast(_PackedConv, last).add(out, identity)


class _MergedCornerHead(nn.Module):
    """:class:`~ar_ros.model.heads.CornerHead` with its two towers run as one: the first convolutions
    (same input) concatenated, the others as two-group convolutions, so each layer is one oneDNN call on
    twice the channels instead of two calls; the same arithmetic per output channel (bf16 outputs equal
    the separate towers' bit for bit), then the head's own box arithmetic on the two score maps. A
    stride-8 head's two :class:`~ar_ros.model.heads.FineCorner` branches are merged the same way (one
    upsampling of both towers' maps, one call per layer)."""

    def __init__(self, head: CornerHead) -> None:
        super().__init__()
        self.stride = head.stride
        self.fine_channels = head.fine_channels
        layers: list = []
        towers_tl, towers_br = head.towers()
        for i, (layer_tl, layer_br) in enumerate(zip(towers_tl, towers_br)):
            conv, rest = self._merge(layer_tl, layer_br, i > 0)
            if i < len(towers_tl) - 1:
                self._check(rest, [nn.ReLU])
                layers += [conv, nn.ReLU(inplace=True)]
            else:
                self.score = conv
        self.towers = nn.Sequential(*layers)
        branches = head.fine_branches()
        if branches is not None:
            tl, br = branches
            conv, rest = self._merge(tl.skip, br.skip, False)
            self._check(rest, [])
            self.fine_skip = conv
            conv, rest = self._merge(tl.mix, br.mix, True)
            self._check(rest, [nn.ReLU])
            self.fine_mix = nn.Sequential(conv, nn.ReLU(inplace=True))
            self.fine_out, _ = self._merge(tl.out, br.out, True)

    @staticmethod
    def _merge(tl: nn.Module, br: nn.Module, grouped: bool) -> tuple:
        """One convolution computing both corners' (``grouped``: each on its own half of the input), and
        what followed the tl convolution in its ``nn.Sequential``."""
        (first_a, *rest_a), (first_b, *rest_b) = (list(tl) if isinstance(tl, nn.Sequential) else [tl],
                                                  list(br) if isinstance(br, nn.Sequential) else [br])
        if [type(m) for m in rest_a] != [type(m) for m in rest_b]:
            raise ValueError("the two corner towers differ")
        # each tower starts with a convolution (anything else fails on its attributes, as the caller expects)
        a, b = cast(nn.Conv2d, first_a), cast(nn.Conv2d, first_b)
        groups = 2 if grouped else 1
        # ignore: torch's stubs declare a convolution's geometry as tuple[int, ...], Conv2d's arguments as pairs
        conv = nn.Conv2d(a.in_channels * groups, 2 * a.out_channels, a.kernel_size, a.stride,  # type: ignore[arg-type]
                         a.padding, a.dilation, groups=groups,  # type: ignore[arg-type]
                         bias=a.bias is not None).to(a.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([a.weight, b.weight]))
            if a.bias is not None:
                if conv.bias is None or b.bias is None:  # conv has one (bias=True above); b may not
                    raise TypeError("one corner tower's convolution has a bias, the other's not")
                conv.bias.copy_(torch.cat([a.bias, b.bias]))
        return conv, rest_a

    def score_convs(self) -> List[nn.Conv2d]:
        """The convolutions whose outputs are score maps (as ``CornerHead.score_convs``)."""
        return [self.score] + ([self.fine_out] if self.fine_channels else [])

    @staticmethod
    def _check(rest: list, want: list) -> None:
        if [type(m) for m in rest if not isinstance(m, nn.Identity)] != want:
            raise ValueError("corner towers must be conv (folded BatchNorm) -> ReLU")

    def forward(self, feat: torch.Tensor, fine: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        from ...model.heads import FineCorner, corner_boxes
        if bool(self.fine_channels) != (fine is not None):
            raise ValueError("the stride-8 map must be given exactly when the head has fine_channels")
        towers = self.towers(feat)
        scores = self.score(towers)
        if fine is not None:
            scores = FineCorner.scores(towers, scores, fine, self.fine_skip, self.fine_mix, self.fine_out)
        return corner_boxes(scores[:, 0:1], scores[:, 1:2], self.stride, fine is not None)


def _pointwise_ops() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._convolution_pointwise and torch.ops.mkldnn._reorder_convolution_weight
                    and torch.ops.mkldnn._convolution_pointwise.binary)
    except (AttributeError, RuntimeError):
        return False


_ACTS = ((nn.ReLU, "relu"), (nn.ReLU6, "relu6"))


def _act_name(module: Optional[nn.Module]) -> str:
    return next((name for kind, name in _ACTS if type(module) is kind), "")


def _identity(module: Optional[nn.Module]) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _fuse_blocks(net: nn.Module, shapes: dict, biases: dict) -> int:
    """Replace every block that says how it fuses (``model.fuse.FusableBlock`` / ``FusableStem``: the ResNet
    stem and blocks, the MobileNetV2 residual blocks, once their BatchNorms are folded) by packed
    convolutions with their activations and residual adds inside the calls; returns how many."""
    from ...model.fuse import FusableBlock, FusableStem

    def can(*convs: Optional[nn.Module]) -> bool:  # convolutions run packed (no Float32) seen in the dry pass
        return all(conv is None or (isinstance(conv, nn.Conv2d) and conv in shapes) for conv in convs)

    def packed(conv: nn.Conv2d, act: str = "none") -> _PackedConv:
        return _PackedConv(conv, shapes[conv], act, biases.get(conv))

    fused = 0
    for parent in list(net.modules()):
        owner = cast(FusableStem, parent) if isinstance(parent, FusableStem) else None
        stem = owner.stem_fusion() if owner is not None else None
        if owner is not None and stem is not None and can(stem.conv):
            owner.use_fused_stem(packed(stem.conv, stem.act))
            fused += 1
        for name, block in list(parent.named_children()):
            chain = block.fusion() if isinstance(block, FusableBlock) else None
            if chain is None or not can(*chain.convs, chain.downsample):
                continue
            _pack_sequential(chain.body, shapes, biases)
            down = None if chain.downsample is None else packed(chain.downsample)
            setattr(parent, name, _FusedResidual(chain.body, [packed(c, a) for c, a in zip(chain.convs, chain.acts)],
                                                 down))
            fused += 1
    return fused


def _pack_sequential(parent: nn.Module, shapes: dict, biases: dict) -> int:
    """Replace the measured ``Conv2d`` children of ``parent`` (also one inside a :class:`_Float32` child) by
    :class:`_PackedConv`, fusing a ReLU / ReLU6 that follows one in an ``nn.Sequential`` (directly or after
    a folded BatchNorm)."""
    names = list(parent._modules)
    packed = 0
    for i, name in enumerate(names):
        child = parent._modules[name]
        holder, key = (child, "module") if isinstance(child, _Float32) else (parent, name)
        conv = holder._modules[key]
        if conv not in shapes:
            continue
        act_at, act = None, "none"
        if isinstance(parent, nn.Sequential):
            after = [parent._modules[n] for n in names[i + 1:i + 3]]
            skip = 1 if after and isinstance(after[0], nn.Identity) else 0
            if len(after) > skip and _act_name(after[skip]):
                act_at, act = names[i + 1 + skip], _act_name(after[skip])
        # shapes holds only the Conv2d layers seen in the dry pass
        holder._modules[key] = _PackedConv(cast(nn.Conv2d, conv), shapes[conv], act, biases.get(conv))
        if act_at is not None:
            parent._modules[act_at] = nn.Identity()
        packed += 1
    return packed


def _pack_convolutions(net: AlphaRefineNet, fuse_blocks: bool = True, biases: Optional[dict] = None,
                       dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace the ``Conv2d`` layers by :class:`_PackedConv` (bf16 ones, and fp32 ones inside
    :class:`_Float32`), fusing the activation that follows one in an ``nn.Sequential`` and, with
    ``fuse_blocks``, the ResNet / MobileNetV2 residual adds and activations (:func:`_fuse_blocks`);
    returns how many convolutions were packed (0 when this torch has no oneDNN pointwise convolution)."""
    if not _pointwise_ops():
        return 0
    shapes: dict = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.setdefault(m, list(args[0].shape)) and None)
             for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.dtype in (torch.bfloat16, torch.float32)
             and m.padding_mode == "zeros" and not isinstance(m.padding, str)]
    size = net.config.input_size
    images = torch.zeros(1, 3, size, size, dtype=dtype).to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():  # one dry pass through every branch: the input shape of each layer
            net.search(images, net.template(images), with_mask=True)
    finally:
        for hook in hooks:
            hook.remove()
    biases = biases or {}
    if fuse_blocks:
        _fuse_blocks(net, shapes, biases)
    for parent in list(net.modules()):
        _pack_sequential(parent, shapes, biases)
    return sum(isinstance(m, _PackedConv) for m in net.modules())


def is_prepared(net: nn.Module) -> bool:
    """Whether ``net`` was rewritten for inference by :func:`pack_fp32` / :func:`to_bf16` (packed convolutions,
    merged corner towers): such a network runs only as it is (CPU, its precision)."""
    return any(isinstance(m, (_PackedConv, _MergedCornerHead)) for m in net.modules())


def pack_fp32(net: AlphaRefineNet) -> AlphaRefineNet:
    """The fp32 CPU path: every convolution of a folded, channels_last fp32 network as a oneDNN-packed one
    (:class:`_PackedConv`), with the activation after it and the residual adds of the ResNet / MobileNetV2
    blocks inside the call, as bf16 does (in place; unchanged where this torch lacks those operators).
    Eager PyTorch runs a convolution with a small input (batch 1, under 20480 values) through its
    im2col fallback instead of oneDNN, and reorders oneDNN's weights at every call; packed, the slim mask
    decoder takes about half the time and the boxes move by float rounding only (``test_fp32_packing``).
    The corner head's two towers run as one (:class:`_MergedCornerHead`), as in bf16."""
    _merge_corner_towers(net)
    _pack_convolutions(net, fuse_blocks=True, dtype=torch.float32)
    return net


def _merge_corner_towers(net: nn.Module) -> Optional[nn.Module]:
    """Replace ``net.corner_head`` by a :class:`_MergedCornerHead` where oneDNN's pointwise convolutions
    exist and the towers allow it (BatchNorm folded); returns the corner head in use."""
    from ...model.heads import CornerHead
    head = getattr(net, "corner_head", None)
    if _pointwise_ops() and type(head) is CornerHead:
        try:
            net.corner_head = head = _MergedCornerHead(head)
        except (ValueError, TypeError, AttributeError):
            pass  # towers of another shape (BatchNorm not folded): kept as two
    return head
