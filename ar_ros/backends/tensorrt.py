"""TensorRT fp16 engines built from the exported ONNX graphs, cached per GPU and TensorRT version.

Engines are not portable across GPUs or TensorRT versions, so each one is stored as
``<onnx dir>/tensorrt/<graph>.engine`` next to a JSON key (GPU name, compute capability, TensorRT version,
sha256 of the ONNX file), the GPU being the one the engine is built or run on (``cuda:N``). A cached
engine whose key does not match is refused with a message saying how to rebuild it, never silently used.
Engines built outside ar_ros (``trtexec`` on a Jetson, see the README) get their key from
:func:`adopt_engines` (``ar-refine export tensorrt --adopt``), which first checks that each one loads here
and has the graph's inputs and outputs.

fp16 engines keep in fp32 what fp16 in torch keeps (``backends/fp32_layers.py``): the corner head's score
maps with the soft-argmax after them, the convolutions whose folded weights or biases are too wide and the
backbone's stem (:func:`fp32_nodes`, on the ONNX graph; the builder obeys these layer precisions).

At run time the engines read their inputs on the backend's own stream after torch's current stream has
written them (``wait_stream``), and torch's stream waits for the engine before anyone reads the outputs:
no host synchronisation, no race. Output shapes and dtypes come from the engine, input shapes are checked
against its optimisation profile.

Needs CUDA and the ``tensorrt`` Python package (JetPack ships it; desktop: ``pip install tensorrt``). The
plain-Python parts (keys, profile shapes, fp32 layers, dtype and shape checks) are tested on CPU
(``test/test_tensorrt_logic.py``); the engines themselves need a GPU.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple, Union

import torch

from ..model import NetConfig
from .base import BackendError, SearchBackend
from .fp32_layers import FP32_WEIGHT_LIMIT
from .onnx import read_manifest

MAX_BATCH = 8
GRAPHS = ("template", "search_box", "search_mask")
OPTIONAL_GRAPHS = ("search_fused",)  # built where the export has it: fused boxes from the mask logits
IO_NAMES = {"template": {"images", "kernels"}, "search_box": {"images", "kernels", "boxes", "score"},
            "search_mask": {"images", "kernels", "boxes", "score", "mask"},
            "search_fused": {"images", "kernels", "boxes", "score", "mask_logits"}}
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64,
                "INT8": torch.int8, "BOOL": torch.bool, "BF16": torch.bfloat16}


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("backend 'tensorrt' needs the tensorrt Python package (JetPack ships it; desktop: "
                           "pip install tensorrt) and a CUDA GPU") from None
    if not torch.cuda.is_available():
        raise BackendError("backend 'tensorrt' needs a CUDA GPU; none is available")
    return trt


# ------------------------------------------------------------------ plain Python (tested on CPU)
def io_names_fit(graph: str, names: Set[str]) -> bool:
    """Whether an engine's tensor names are those of ``graph`` (:data:`IO_NAMES`), a search graph's with
    the quality head's two outputs or without them."""
    want = IO_NAMES[graph]
    return names == want or (graph != "template" and names == want | {"quality", "base_quality"})


def gpu_identity(device: Union[int, torch.device]) -> Dict[str, str]:
    """Name and compute capability of one GPU (``cuda:N``; a bare ``cuda`` is the current device)."""
    index = device if isinstance(device, int) else device.index
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def machine_key(trt_version: str, onnx_file: Path, gpu: Dict[str, str]) -> Dict[str, str]:
    """What an engine is only valid for: that GPU (:func:`gpu_identity`), TensorRT version and ONNX file."""
    return {"gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"], "tensorrt": trt_version,
            "onnx_sha256": hashlib.sha256(Path(onnx_file).read_bytes()).hexdigest()}


def stale_reason(saved: Dict[str, str], current: Dict[str, str]) -> str:
    """Why a cached engine may not be used here ('' when it may)."""
    diffs = [f"{k}: engine {saved.get(k)!r} vs here {v!r}" for k, v in current.items() if saved.get(k) != v]
    return "; ".join(diffs)


def engine_keys(onnx_dir: Union[str, Path]) -> Dict[str, Dict[str, str]]:
    """The key of each engine built (or adopted) in ``onnx_dir``; needs neither CUDA nor tensorrt."""
    keys = {}
    for graph in GRAPHS + OPTIONAL_GRAPHS:
        key_file = Path(onnx_dir) / "tensorrt" / f"{graph}.json"
        if key_file.is_file() and key_file.with_suffix(".engine").is_file():
            try:
                keys[graph] = json.loads(key_file.read_text())
            except ValueError:
                keys[graph] = {"error": f"unreadable key file {key_file.name}"}
    return keys


def profile_shapes(graph: str, config: NetConfig, max_batch: int) -> Dict[str, Tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of each input of ``graph`` in the engines' optimisation profile."""
    size, cells, channels = config.input_size, (config.feat_size // 2) ** 2, config.channels["layer3"]
    opt = max(1, max_batch // 2)
    shapes: Dict[str, Tuple[tuple, tuple, tuple]] = {
        "images": ((1, 3, size, size), (opt, 3, size, size), (max_batch, 3, size, size))}
    if graph != "template":
        shapes["kernels"] = ((1, cells, channels), (opt, cells, channels), (max_batch, cells, channels))
    return shapes


def fp32_nodes(model, backbone: str, limit: float = FP32_WEIGHT_LIMIT) -> List[str]:
    """Names of the ONNX nodes an fp16 engine runs in fp32 (an ``onnx.ModelProto``, weights folded by the
    exporter): every corner-head node but the towers' feature layers (the score maps, their upsampling,
    the soft-argmax and peak mass), the convolutions whose weights or bias exceed ``limit`` in magnitude,
    and the backbone's first ``int8_fp32_convs`` convolutions. The same rule as torch's fp16
    (``fp32_layers.fp32_convolutions``), on the graph."""
    import numpy as np
    from onnx import numpy_helper
    from ..model.backbone import BACKBONES
    from .onnx_export import INT8_LAYERS
    towers = tuple(p for p in INT8_LAYERS if p.startswith("/corner_head/"))
    weights = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.name.startswith("/corner_head/") and not node.name.startswith(towers):
            keep.append(node.name)
        elif node.op_type == "Conv":
            arrays = [numpy_helper.to_array(weights[i]) for i in node.input[1:] if i in weights]
            if any(a.size and float(np.abs(a).max()) > limit for a in arrays):
                keep.append(node.name)
    stem = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/feature_extractor/")]
    keep += [n for n in stem[:BACKBONES[backbone].int8_fp32_convs] if n not in keep]
    return keep


def keeps_fp32(layer_name: str, nodes: Iterable[str]) -> bool:
    """Whether a TensorRT layer is one of ``nodes``: the ONNX parser names the layer that computes a node
    after the node. Only exact names count (ONNX's own names end in ``_1``, ``_2``..., so a suffix rule
    would catch other nodes); helper layers the parser adds around a node stay in the builder's choice."""
    return layer_name in set(nodes)


def torch_dtype(trt_dtype_name: str) -> torch.dtype:
    """The torch dtype of a TensorRT tensor dtype, by its name (``tensorrt.DataType.HALF.name``)."""
    try:
        return TORCH_DTYPES[trt_dtype_name]
    except KeyError:
        raise BackendError(f"TensorRT tensor type {trt_dtype_name} has no torch equivalent here") from None


def concrete_shape(name: str, shape: Sequence[int]) -> Tuple[int, ...]:
    """An output's shape once the inputs are set: every dimension known, else BackendError."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise BackendError(f"TensorRT output {name} has shape {dims} with unknown dimensions after the inputs "
                           "were set: the engine does not match the exported graph")
    return dims


def input_shape_problem(name: str, shape: Sequence[int], lowest: Sequence[int], highest: Sequence[int]) -> str:
    """Why ``shape`` is outside an input's profile range ('' when it is inside)."""
    if len(shape) != len(lowest) or any(not lo <= d <= hi for d, lo, hi in zip(shape, lowest, highest)):
        return (f"TensorRT input {name} of shape {tuple(shape)} is outside the engine's profile "
                f"{tuple(lowest)}..{tuple(highest)}")
    return ""


# ------------------------------------------------------------------ engines
def build_engines(onnx_dir: Union[str, Path], max_batch: int = MAX_BATCH, fp16: bool = True,
                  device: Union[int, torch.device] = 0) -> Path:
    """Build (or rebuild) the engines of every exported graph for GPU ``device``; returns the engine folder.
    fp16 engines keep :func:`fp32_nodes` in fp32 (layer precisions the builder must obey)."""
    trt = _trt()
    try:
        import onnx
    except ImportError:
        raise BackendError("building TensorRT engines needs the onnx package (it finds the layers fp16 engines "
                           "keep in fp32): pip install onnx") from None
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    config = NetConfig.from_dict(manifest["config"])
    out = onnx_dir / "tensorrt"
    out.mkdir(exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    index = device if isinstance(device, int) else (device.index or 0)
    graphs = GRAPHS + tuple(g for g in OPTIONAL_GRAPHS if g in manifest["files"])
    with torch.cuda.device(index):
        for graph in graphs:
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
                cfg.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
                keep = fp32_nodes(onnx.load(str(onnx_file)), config.backbone)
                for i in range(network.num_layers):
                    layer = network.get_layer(i)
                    if keeps_fp32(layer.name, keep):
                        layer.precision = trt.float32
                        for j in range(layer.num_outputs):
                            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                                layer.set_output_type(j, trt.float32)
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in profile_shapes(graph, config, max_batch).items():
                profile.set_shape(name, lo, opt, hi)
            cfg.add_optimization_profile(profile)
            engine = builder.build_serialized_network(network, cfg)
            if engine is None:
                raise BackendError(f"TensorRT failed to build an engine for {onnx_file}")
            (out / f"{graph}.engine").write_bytes(bytes(engine))
            (out / f"{graph}.json").write_text(json.dumps(
                machine_key(trt.__version__, onnx_file, gpu_identity(index)), indent=2))
    return out


def adopt_engines(onnx_dir: Union[str, Path], device: Union[int, torch.device] = 0) -> Path:
    """Key engines built outside ar_ros (e.g. by trtexec) to GPU ``device``, after checking each one.

    Each ``<onnx dir>/tensorrt/<graph>.engine`` must load with this machine's TensorRT and have exactly the
    exported graph's tensors; then its key is written as if ar_ros had built it. Returns the engine folder.
    """
    trt = _trt()
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    out = onnx_dir / "tensorrt"
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    optional = [g for g in OPTIONAL_GRAPHS if (out / f"{g}.engine").is_file()]
    for graph in GRAPHS + tuple(optional):
        engine_file = out / f"{graph}.engine"
        if not engine_file.is_file():
            raise BackendError(f"no engine {engine_file}: build all of {', '.join(GRAPHS)} first (README: trtexec)")
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise BackendError(f"{engine_file} does not load with TensorRT {trt.__version__} on this GPU; "
                               "rebuild it here")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if not io_names_fit(graph, names):
            raise BackendError(f"{engine_file} has tensors {sorted(names)}, expected {sorted(IO_NAMES[graph])}"
                               f"{' (and the quality pair)' if graph != 'template' else ''}: "
                               f"was it built from {manifest['files'][graph]}?")
        (out / f"{graph}.json").write_text(json.dumps(
            machine_key(trt.__version__, onnx_dir / manifest["files"][graph], gpu_identity(device)), indent=2))
    return out


class TensorRTBackend(SearchBackend):
    """Runs cached engines on fp32 CUDA crops (fp16 inside, see the module docstring)."""

    name = "tensorrt"

    def __init__(self, onnx_dir: Union[str, Path], device: str = "cuda") -> None:
        trt = _trt()
        self.trt = trt
        onnx_dir = Path(onnx_dir)
        manifest = read_manifest(onnx_dir)
        self.config = NetConfig.from_dict(manifest["config"])
        self.meta = {"source": f"tensorrt:{onnx_dir}"}
        dev = torch.device(device if device.startswith("cuda") else "cuda")
        self.device = self.input_device = torch.device(
            "cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        self.precision, self.precision_note = "fp16", "fp16 engines (fp32 inputs; score maps and wide layers fp32)"
        gpu = gpu_identity(self.device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.contexts = {}
        graphs = GRAPHS + tuple(g for g in OPTIONAL_GRAPHS if (onnx_dir / "tensorrt" / f"{g}.engine").is_file()
                                and g in manifest["files"])
        with torch.cuda.device(self.device):
            for graph in graphs:
                engine_file = onnx_dir / "tensorrt" / f"{graph}.engine"
                key_file = engine_file.with_suffix(".json")
                if not engine_file.is_file() or not key_file.is_file():
                    raise BackendError(f"no TensorRT engine {engine_file}; build it with "
                                       f"`ar-refine export tensorrt {onnx_dir}`")
                reason = stale_reason(json.loads(key_file.read_text()),
                                      machine_key(trt.__version__, onnx_dir / manifest["files"][graph], gpu))
                if reason:
                    raise BackendError(f"stale TensorRT engine {engine_file} ({reason}); rebuild it with "
                                       f"`ar-refine export tensorrt {onnx_dir}`")
                engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
                if engine is None:
                    raise BackendError(f"cannot load TensorRT engine {engine_file}; rebuild it")
                self.contexts[graph] = (engine, engine.create_execution_context())
            self.stream = torch.cuda.Stream(device=self.device)
        # the Refiner splits larger batches into passes of this size
        self.max_batch = min(self._profile(engine, "images")[1][0] for engine, _ in self.contexts.values())
        self.mask_logits = "search_fused" in self.contexts
        # the engines are built from the exported graphs, which carry the quality head's outputs where the
        # network has one
        box_engine = self.contexts["search_box"][0]
        outputs = [box_engine.get_tensor_name(i) for i in range(box_engine.num_io_tensors)]
        self.quality = "quality" in outputs and "base_quality" in outputs

    @staticmethod
    def _profile(engine, name: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """(lowest, highest) shape of input ``name`` in the engine's first optimisation profile."""
        lo, _, hi = engine.get_tensor_profile_shape(name, 0)
        return tuple(lo), tuple(hi)

    def _run(self, graph: str, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        trt = self.trt
        engine, ctx = self.contexts[graph]
        current = torch.cuda.current_stream(self.device)
        held = []
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device, torch.float32).contiguous()
            shape = tuple(tensor.shape)
            if not ctx.set_input_shape(name, shape):
                problem = input_shape_problem(name, shape, *self._profile(engine, name))
                raise BackendError(problem or f"TensorRT refused input {name} of shape {shape}")
            ctx.set_tensor_address(name, tensor.data_ptr())
            held.append(tensor)
        results = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            shape = concrete_shape(name, ctx.get_tensor_shape(name))
            results[name] = torch.empty(shape, device=self.device, dtype=torch_dtype(engine.get_tensor_dtype(name).name))
            ctx.set_tensor_address(name, results[name].data_ptr())
            held.append(results[name])
        self.stream.wait_stream(current)            # the inputs were written on torch's stream
        for tensor in held:                         # not reused by the allocator before the engine is done
            tensor.record_stream(self.stream)
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT execution of {graph} failed")
        current.wait_stream(self.stream)             # readers on torch's stream see the outputs
        return results

    def template(self, images: torch.Tensor) -> torch.Tensor:
        return self._run("template", {"images": images})["kernels"]

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        graph = ("search_fused" if mask_logits and self.mask_logits else "search_mask") if with_mask else "search_box"
        return self._run(graph, {"images": images, "kernels": kernels})
