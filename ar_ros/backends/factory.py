"""The one place that turns (weights, device, precision, backend name, options) into a :class:`SearchBackend`,
and the one place that says why a combination is refused.

A new backend is one module in this package with a :class:`~.base.SearchBackend` subclass, plus one branch
in :func:`open_backend` (and its name in :data:`.names.BACKENDS`).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Tuple, Union

import torch

from ..model import AlphaRefineNet, CheckpointError, load_network
from .base import BackendRefused, SearchBackend
from .names import BACKENDS, EXPORTED, PRECISIONS
from .torch_cpu.cpu import bf16_problem
from .torch_cpu.packing import is_prepared

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "weights" / "ar_ros_default.pt"

Source = Union[None, str, os.PathLike, AlphaRefineNet]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else must exist on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BackendRefused(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendRefused(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise BackendRefused(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def resolve_precision(precision: str, device: torch.device, backend: str = "torch") -> Tuple[str, str]:
    """(what runs, why): ``auto`` is fp16 for torch on CUDA and fp32 everywhere else (bf16 only when asked
    for: ``ar-refine check-bf16`` says whether it pays for given weights on this CPU); an explicit precision
    that cannot run here is refused with the reason."""
    if precision not in PRECISIONS:
        raise BackendRefused(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend in EXPORTED:
        if precision not in ("auto", "fp32"):
            raise BackendRefused(f"backend {backend!r} runs the exported graphs as they are (int8 with "
                                 f"'onnxruntime-int8', fp16 engines with 'tensorrt'); use precision 'auto' or 'fp32'")
        return "fp32", f"fp32 inputs: backend {backend} runs the export's own graphs"
    if precision == "auto":
        chosen = "fp16" if device.type == "cuda" else "fp32"
        return chosen, f"{chosen}: auto on {device.type}"
    # fp16 on CPU runs (slowly on x86, natively on Arm): the GPU's numerics, checked without a GPU
    if precision == "bf16":
        problem = bf16_problem(device)
        if problem:
            raise BackendRefused(problem)
    return precision, f"{precision}: as requested"


def refusal(source: Source, backend: str, device: torch.device, cuda_graphs: bool) -> str:
    """Why this backend cannot run these weights on this device ('' when it can)."""
    if backend not in BACKENDS:
        return f"backend must be one of {BACKENDS}, got {backend!r}"
    if cuda_graphs and not (backend == "torch" and device.type == "cuda"):
        return f"cuda_graphs needs backend 'torch' on device 'cuda' (got {backend!r} on {device.type!r})"
    if backend in EXPORTED and (source is None or isinstance(source, AlphaRefineNet)):
        extra = " with engines from `ar-refine export tensorrt`" if backend == "tensorrt" else ""
        return f"backend {backend!r} needs checkpoint = a folder from `ar-refine export onnx`{extra}"
    if backend == "tensorrt" and device.type != "cuda":
        return "backend 'tensorrt' needs a CUDA device"
    return ""


def _network(source: Source) -> Tuple[AlphaRefineNet, dict]:
    """A private copy of the network to prepare (preparing changes it in place) and where it came from."""
    if isinstance(source, AlphaRefineNet):
        return copy.deepcopy(source), {"source": "network"}
    path = Path(source) if source else DEFAULT_CHECKPOINT
    if source is None and not path.is_file():
        raise CheckpointError(f"the built-in default model is missing ({path}); pass checkpoint=...")
    return load_network(path)


def open_backend(source: Source = None, device: str = "auto", precision: str = "auto", backend: str = "torch", *,
                 cuda_graphs: bool = False, cpu_graphs: bool = True, fold_batchnorm: bool = True,
                 channels_last: bool = True) -> SearchBackend:
    """The backend for these weights: ``source`` is a checkpoint path (ours, the authors', a state_dict), an
    :class:`AlphaRefineNet` (copied, never changed), ``None`` for the shipped default, or an export folder
    for the exported backends. ``cuda_graphs``: torch on CUDA replays captured graphs; ``cpu_graphs``: torch
    on CPU runs oneDNN Graph graphs of the shapes ``warm_up`` builds; ``fold_batchnorm=False`` /
    ``channels_last=False`` keep the unmodified network (eager torch, e.g. to time it)."""
    dev = resolve_device(device)
    problem = refusal(source, backend, dev, cuda_graphs)
    if problem:
        raise BackendRefused(problem)
    chosen, note = resolve_precision(precision, dev, backend)
    if backend.startswith("onnxruntime"):
        from .onnx import OnnxRuntimeBackend
        # one thread setting for both libraries: ONNX Runtime takes torch's (torch.set_num_threads)
        # the device as given: auto may fall back to CPU (with a warning), an explicit cuda[:N] may not
        where = device if device == "auto" else str(dev)
        return OnnxRuntimeBackend(source, device=where, int8=backend.endswith("int8"),  # type: ignore[arg-type]
                                  threads=torch.get_num_threads())
    if backend == "tensorrt":
        from .tensorrt import TensorRTBackend
        return TensorRTBackend(source, device=str(dev))  # type: ignore[arg-type]
    if isinstance(source, AlphaRefineNet) and is_prepared(source) and not (dev.type == "cpu" and chosen == "fp32"):
        raise BackendRefused("this network was prepared for CPU fp32 by another Refiner (packed convolutions); pass "
                             "its checkpoint path or an unprepared AlphaRefineNet for another device or precision")
    net, meta = _network(source)
    if dev.type == "cpu" and fold_batchnorm and channels_last and chosen != "fp16":
        from .torch_cpu.backend import TorchCpuBackend
        return TorchCpuBackend(net, chosen, graphs=cpu_graphs, meta=meta, precision_note=note)
    if cuda_graphs:
        from .cuda_graphs import CudaGraphsBackend
        return CudaGraphsBackend(net, dev, chosen, channels_last=channels_last, fold_batchnorm=fold_batchnorm,
                                 meta=meta, precision_note=note)
    from .torch_eager import TorchBackend
    return TorchBackend(net, dev, chosen, channels_last=channels_last, fold_batchnorm=fold_batchnorm, meta=meta,
                        precision_note=note)
