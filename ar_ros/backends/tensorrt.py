"""TensorRT fp16 engines built from the exported ONNX graphs, cached per GPU and TensorRT version.

Engines are not portable across GPUs or TensorRT versions, so each one is stored as
``<onnx dir>/tensorrt/<graph>.engine`` next to a JSON key (GPU name, compute capability, TensorRT version,
sha256 of the ONNX file). A cached engine whose key does not match this machine is refused with a
message saying how to rebuild it, never silently used. Engines built outside ar_ros (``trtexec`` on a
Jetson, see the README) get their key from :func:`adopt_engines` (``ar-refine export tensorrt --adopt``),
which first checks that each one loads here and has the graph's inputs and outputs.

Needs CUDA and the ``tensorrt`` Python package (JetPack ships it; desktop: ``pip install tensorrt``).
Untested on this project's CI (no GPU); the error paths are tested.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Union

import torch

from ..model import NetConfig
from .onnx import BackendError, read_manifest

MAX_BATCH = 8
GRAPHS = ("template", "search_box", "search_mask")
IO_NAMES = {"template": {"images", "kernels"}, "search_box": {"images", "kernels", "boxes", "score"},
            "search_mask": {"images", "kernels", "boxes", "score", "mask"}}


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("backend 'tensorrt' needs the tensorrt Python package (JetPack ships it; desktop: "
                           "pip install tensorrt) and a CUDA GPU") from None
    if not torch.cuda.is_available():
        raise BackendError("backend 'tensorrt' needs a CUDA GPU; none is available")
    return trt


def machine_key(trt_version: str, onnx_file: Path) -> Dict[str, str]:
    """What an engine is only valid for."""
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "tensorrt": trt_version,
            "onnx_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest()}


def stale_reason(saved: Dict[str, str], current: Dict[str, str]) -> str:
    """Why a cached engine may not be used here ('' when it may)."""
    diffs = [f"{k}: engine {saved.get(k)!r} vs here {v!r}" for k, v in current.items() if saved.get(k) != v]
    return "; ".join(diffs)


def engine_keys(onnx_dir: Union[str, Path]) -> Dict[str, Dict[str, str]]:
    """The key of each engine built (or adopted) in ``onnx_dir``; needs neither CUDA nor tensorrt."""
    keys = {}
    for graph in GRAPHS:
        key_file = Path(onnx_dir) / "tensorrt" / f"{graph}.json"
        if key_file.is_file() and key_file.with_suffix(".engine").is_file():
            try:
                keys[graph] = json.loads(key_file.read_text())
            except ValueError:
                keys[graph] = {"error": f"unreadable key file {key_file.name}"}
    return keys


def build_engines(onnx_dir: Union[str, Path], max_batch: int = MAX_BATCH, fp16: bool = True) -> Path:
    """Build (or rebuild) the fp16 engines for every exported graph; returns the engine folder."""
    trt = _trt()
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    config = NetConfig.from_dict(manifest["config"])
    size, cells = config.input_size, (config.feat_size // 2) ** 2
    channels = config.channels["layer3"]
    out = onnx_dir / "tensorrt"
    out.mkdir(exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    for graph in GRAPHS:
        onnx_file = onnx_dir / manifest["files"][graph]
        builder = trt.Builder(logger)
        flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else \
            1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_file.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {onnx_file}: {errors}")
        cfg = builder.create_builder_config()
        if fp16:
            cfg.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        profile.set_shape("images", (1, 3, size, size), (max(1, max_batch // 2), 3, size, size),
                          (max_batch, 3, size, size))
        if graph != "template":
            profile.set_shape("kernels", (1, cells, channels), (max(1, max_batch // 2), cells, channels),
                              (max_batch, cells, channels))
        cfg.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, cfg)
        if engine is None:
            raise BackendError(f"TensorRT failed to build an engine for {onnx_file}")
        (out / f"{graph}.engine").write_bytes(bytes(engine))
        (out / f"{graph}.json").write_text(json.dumps(machine_key(trt.__version__, onnx_file), indent=2))
    return out


def adopt_engines(onnx_dir: Union[str, Path]) -> Path:
    """Key engines built outside ar_ros (e.g. by trtexec) to this machine, after checking each one.

    Each ``<onnx dir>/tensorrt/<graph>.engine`` must load with this machine's TensorRT and have exactly the
    exported graph's tensors; then its key is written as if ar_ros had built it. Returns the engine folder.
    """
    trt = _trt()
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    out = onnx_dir / "tensorrt"
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for graph in GRAPHS:
        engine_file = out / f"{graph}.engine"
        if not engine_file.is_file():
            raise BackendError(f"no engine {engine_file}: build all of {', '.join(GRAPHS)} first (README: trtexec)")
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise BackendError(f"{engine_file} does not load with TensorRT {trt.__version__} on this GPU; "
                               "rebuild it here")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != IO_NAMES[graph]:
            raise BackendError(f"{engine_file} has tensors {sorted(names)}, expected {sorted(IO_NAMES[graph])}: "
                               f"was it built from {manifest['files'][graph]}?")
        (out / f"{graph}.json").write_text(json.dumps(
            machine_key(trt.__version__, onnx_dir / manifest["files"][graph]), indent=2))
    return out


class TensorRTBackend:
    """Runs cached engines on CUDA tensors (same interface as the torch network)."""

    def __init__(self, onnx_dir: Union[str, Path], device: str = "cuda") -> None:
        trt = _trt()
        onnx_dir = Path(onnx_dir)
        manifest = read_manifest(onnx_dir)
        self.config = NetConfig.from_dict(manifest["config"])
        self.device = torch.device(device if device.startswith("cuda") else "cuda")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.contexts = {}
        for graph in GRAPHS:
            engine_file = onnx_dir / "tensorrt" / f"{graph}.engine"
            key_file = engine_file.with_suffix(".json")
            if not engine_file.is_file() or not key_file.is_file():
                raise BackendError(f"no TensorRT engine {engine_file}; build it with "
                                   f"`ar-refine export tensorrt {onnx_dir}`")
            reason = stale_reason(json.loads(key_file.read_text()),
                                  machine_key(trt.__version__, onnx_dir / manifest["files"][graph]))
            if reason:
                raise BackendError(f"stale TensorRT engine {engine_file} ({reason}); rebuild it with "
                                   f"`ar-refine export tensorrt {onnx_dir}`")
            engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if engine is None:
                raise BackendError(f"cannot load TensorRT engine {engine_file}; rebuild it")
            self.contexts[graph] = (engine, engine.create_execution_context())
        # the Refiner splits larger batches into passes of this size
        self.max_batch = min(self._max_batch(engine) for engine, _ in self.contexts.values())
        self.stream = torch.cuda.Stream(device=self.device)

    @staticmethod
    def _max_batch(engine) -> int:
        """Largest batch of the engine's optimisation profile (trtexec engines may differ from ours)."""
        try:
            return int(engine.get_tensor_profile_shape("images", 0)[2][0])
        except Exception:  # older TensorRT Python API
            return MAX_BATCH

    def _run(self, graph: str, inputs: Dict[str, torch.Tensor], outputs: Dict[str, tuple]) -> Dict[str, torch.Tensor]:
        engine, ctx = self.contexts[graph]
        results = {name: torch.empty(shape, device=self.device, dtype=torch.float32) for name, shape in outputs.items()}
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device, torch.float32).contiguous()
            inputs[name] = tensor
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in results.items():
            ctx.set_tensor_address(name, tensor.data_ptr())
        with torch.cuda.stream(self.stream):
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f"TensorRT execution of {graph} failed")
        self.stream.synchronize()
        return results

    def template(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        cells = (self.config.feat_size // 2) ** 2
        channels = self.config.channels["layer3"]
        return self._run("template", {"images": images}, {"kernels": (b, cells, channels)})["kernels"]

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               ) -> Dict[str, torch.Tensor]:
        b, size = images.shape[0], self.config.input_size
        outputs: Dict[str, tuple] = {"boxes": (b, 4), "score": (b,)}
        if with_mask:
            outputs["mask"] = (b, 1, size, size)
        return self._run("search_mask" if with_mask else "search_box", {"images": images, "kernels": kernels},
                         outputs)

    def eval(self) -> "TensorRTBackend":  # interface parity with torch modules
        return self
