"""Numeric precision of the torch backend: fp32, fp16 (CUDA), bf16 (CPUs with bf16 units) and ``auto``.

bf16 pays on a CPU only where it has bf16 units (Intel AMX, AVX-512 BF16 on AMD Zen 4/5, Arm BF16);
elsewhere oneDNN emulates it and it is slower than fp32, so it is refused there. ``auto`` on such a CPU
picks bf16 only for weights whose recorded verdict says bf16 refines like fp32 and faster: the verdict is
measured once by ``ar-refine check-bf16`` (``eval/precision_check.py``: the suite agreement gate of the
int8 graph plus a timing) and read here from a small JSON file in the user cache folder, keyed by the
weights' sha256, the CPU and the torch version. The engine only reads verdicts, it never measures them
(engine must not depend on eval), so a node start costs one hash of the weights, not a benchmark.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
VERDICTS_FILE = "precision_verdicts.json"


def cpu_bf16_units() -> str:
    """This CPU's bf16 units as a name ('AMX', 'AVX-512 BF16', 'Arm BF16'), or '' when it has none."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("amx_bf16"):
        return "AMX"
    if caps.get("avx512_bf16"):
        return "AVX-512 BF16"
    # torch's oneDNN query is true on any AVX-512 x86 CPU (emulated bf16), so it decides only on Arm
    if platform.machine().lower() in ("aarch64", "arm64") and torch.backends.mkldnn.is_available() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "Arm BF16"
    return ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what torch or the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return str(caps.get("cpu_name") or platform.processor() or platform.machine())


def cpu_features() -> str:
    """The CPU features that decide bf16 / int8 speed, as one line for benchmark output."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    names = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")
    seen = " ".join(n for n in names if caps.get(n)) or "none of " + ", ".join(names)
    return f"{cpu_name()}, {caps.get('num_logical_cores', os.cpu_count())} logical cores: {seen}; " \
           f"bf16 units: {cpu_bf16_units() or 'none'}"


def bf16_problem(device: torch.device) -> str:
    """Why bf16 cannot be used on ``device`` ('' when it can)."""
    if device.type != "cpu":
        return f"precision 'bf16' is for CPUs with bf16 units; on {device.type} use 'fp16'"
    if not cpu_bf16_units():
        return (f"precision 'bf16' needs a CPU with bf16 units (Intel AMX, AVX-512 BF16 or Arm BF16); this one "
                f"({cpu_name()}) has none and would emulate it, slower than fp32: use 'fp32'")
    return ""


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of an explicit precision, refused where it cannot run; ``auto`` -> fp16 on CUDA, else fp32.

    On CPU ``auto`` may still become bf16 once the weights are known: see :func:`auto_cpu_precision`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'fp32' (or 'bf16' on CPUs with bf16 units)")
    if precision == "bf16":
        problem = bf16_problem(device)
        if problem:
            raise ValueError(problem)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def weights_key(net: nn.Module) -> str:
    """sha256 of a network's config and state_dict (as loaded, before BatchNorm folding)."""
    h = hashlib.sha256(json.dumps(getattr(net, "config").to_dict(), sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verdicts_path() -> Path:
    """``$XDG_CACHE_HOME/ar_ros/precision_verdicts.json`` (``~/.cache`` when XDG_CACHE_HOME is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "ar_ros" / VERDICTS_FILE


def _verdict_slot(weights: str) -> str:
    # a verdict holds for these weights on this CPU model with this torch (oneDNN kernels differ per version)
    return f"{weights}|{cpu_name()}|torch {torch.__version__}"


def read_verdict(weights: str) -> Optional[dict]:
    """The recorded bf16 verdict of these weights on this CPU and torch, or None (none, or unreadable file)."""
    try:
        data = json.loads(verdicts_path().read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(_verdict_slot(weights)) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) and isinstance(entry.get("bf16"), bool) else None


def record_verdict(weights: str, verdict: dict) -> Path:
    """Store ``verdict`` (needs a bool ``bf16``: may auto pick bf16) for these weights; returns the file."""
    if not isinstance(verdict.get("bf16"), bool):
        raise ValueError("a verdict needs a boolean 'bf16'")
    path = verdicts_path()
    try:
        data = json.loads(path.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[_verdict_slot(weights)] = verdict
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)  # atomic: a node starting meanwhile reads the old or the new file, never half
    return path


def auto_cpu_precision(net: nn.Module) -> Tuple[torch.dtype, str]:
    """``auto`` on CPU for these weights: (bf16 or fp32, why), from the CPU's units and the recorded verdict."""
    units = cpu_bf16_units()
    if not units:
        return torch.float32, "fp32: this CPU has no bf16 units"
    key = weights_key(net)
    verdict = read_verdict(key)
    if verdict is None:
        return torch.float32, (f"fp32: this CPU has {units} but no bf16 verdict is recorded for these weights "
                               f"(sha256 {key[:12]}); `ar-refine check-bf16 [--checkpoint C]` measures one")
    detail = verdict.get("reason", "")
    if verdict["bf16"]:
        return torch.bfloat16, f"bf16: {units}; recorded verdict for sha256 {key[:12]}: {detail}"
    return torch.float32, f"fp32: recorded bf16 verdict for sha256 {key[:12]} is no: {detail}"


class _Float32(nn.Module):
    """Runs ``module`` in fp32 on a bf16 input."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float())


class _PackedConv(nn.Module):
    """A bf16 convolution whose weights oneDNN reorders once instead of at every call, ReLU fused if asked.

    Eager PyTorch hands oneDNN the weights in PyTorch's layout and oneDNN reorders them into its blocked
    one on every call; for bf16 on CPU that reorder costs as much as a small layer's arithmetic.
    """

    def __init__(self, conv: nn.Conv2d, input_shape: list, relu: bool) -> None:
        super().__init__()
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight.detach(), *self.geometry[:3],
                                                                       conv.groups, input_shape)
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.attr = "relu" if relu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias, *self.geometry, self.attr, [], "")


def _pointwise_ops() -> bool:
    try:
        return bool(torch.ops.mkldnn._convolution_pointwise and torch.ops.mkldnn._reorder_convolution_weight)
    except (AttributeError, RuntimeError):
        return False


def _pack_convolutions(net: nn.Module) -> int:
    """Replace the bf16 ``Conv2d`` layers by :class:`_PackedConv`, fusing a ReLU that follows one in an
    ``nn.Sequential`` (directly or after a folded BatchNorm); returns how many were packed (0 when this
    torch has no oneDNN pointwise convolution)."""
    if not _pointwise_ops():
        return 0
    shapes: dict = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.setdefault(m, list(args[0].shape)) and None)
             for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.dtype == torch.bfloat16
             and m.padding_mode == "zeros" and not isinstance(m.padding, str)]
    size = net.config.input_size
    images = torch.zeros(1, 3, size, size, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():  # one dry pass through every branch: the input shape of each layer
            net.search(images, net.template(images), with_mask=True)
    finally:
        for hook in hooks:
            hook.remove()
    packed = 0
    for parent in list(net.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            conv = parent._modules[name]
            if conv not in shapes:
                continue
            relu_at = None
            if isinstance(parent, nn.Sequential):
                after = [parent._modules[n] for n in names[i + 1:i + 3]]
                skip = 1 if after and isinstance(after[0], nn.Identity) else 0
                if len(after) > skip and isinstance(after[skip], nn.ReLU):
                    relu_at = names[i + 1 + skip]
            parent._modules[name] = _PackedConv(conv, shapes[conv], relu=relu_at is not None)
            if relu_at is not None:
                parent._modules[relu_at] = nn.Identity()
            packed += 1
    return packed


def to_bf16(net: nn.Module) -> nn.Module:
    """Cast a (folded, channels_last, CPU) network to bf16 in place for inference, convolutions prepacked.

    The corner heads' last 1x1 convolution stays fp32: its output is the score map the soft-argmax takes
    the expectation over, and in fp32 the shipped model's boxes move half as much from fp32 (mean 0.018 vs
    0.031 px, max 0.23 vs 0.28 px on the small synthetic suite) for no measurable time (32 -> 1 channels on
    a 1/16 map). The other convolutions get their weights reordered for oneDNN once (:class:`_PackedConv`).
    """
    net.to(torch.bfloat16)
    head = getattr(net, "corner_head", None)
    for name in ("conv5_tl", "conv5_br"):
        if head is not None and isinstance(getattr(head, name, None), nn.Conv2d):
            setattr(head, name, _Float32(getattr(head, name)))
    _pack_convolutions(net)
    return net
