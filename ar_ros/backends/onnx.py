"""ONNX export (template and search as separate graphs, dynamic batch) and an ONNX Runtime backend.

The template graph runs once per target; the search graph takes the cached kernels, so exported
models keep the engine's caching. ``search_box.onnx`` computes boxes and scores only;
``search_mask.onnx`` adds the mask branch; ``search_fused.onnx`` is ``search_mask`` stopped before the
mask's last upsampling (``mask_logits`` at the decoder's last stride, S/2; S/4 for ``slim4``): what
``box_mode: fused`` needs for its boxes when no mask is asked for, ~0.2 ms less per int8 search here.
Exports without it (older ar_ros) run ``search_mask`` for those boxes. Opset 17 (TensorRT 8.6+ and 10
read it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from ..model import AlphaRefineNet, NetConfig
from ..model.backbone import BACKBONES
from ..model.network import SearchTensors

OPSET = 17
MANIFEST = "ar_ros_onnx.json"
FILES = {"template": "template.onnx", "search_box": "search_box.onnx", "search_mask": "search_mask.onnx",
         "search_fused": "search_fused.onnx"}


class BackendError(RuntimeError):
    """A backend that cannot be used here: missing package, missing or stale model files."""


def session_options(threads: int = 0):
    """ONNX Runtime session options: ``threads`` intra-op threads (0 = its default), no spinning after a run.

    ONNX Runtime's pool threads keep spinning for a while after each run. A Refiner holds three sessions,
    and two refiners in one process (fp32 and int8, or torch and ONNX Runtime) then fight over the cores:
    measured here, one fp32 and one int8 search graph called in turn took 17-18 / 11-14 ms with spinning
    left on and 10.4-10.6 / 7.1-7.4 ms with it stopped at the end of each run. Alone, a graph runs as fast
    either way (spinning stays on during a run).
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


class _Template(nn.Module):
    def __init__(self, net: AlphaRefineNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.template(images)


def export_onnx(net: AlphaRefineNet, out_dir: Union[str, Path], source: str = "") -> Path:
    """Write the four graphs (:data:`FILES`) and a manifest into ``out_dir``; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = net.float().eval().to("cpu", memory_format=torch.contiguous_format)
    size = net.config.input_size
    images = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        kernels = net.template(images)
    batch = {0: "batch"}
    jobs = [(_Template(net), (images,), FILES["template"], ["images"], ["kernels"]),
            (SearchTensors(net, False), (images, kernels), FILES["search_box"], ["images", "kernels"],
             ["boxes", "score"]),
            (SearchTensors(net, True), (images, kernels), FILES["search_mask"], ["images", "kernels"],
             ["boxes", "score", "mask"]),
            (SearchTensors(net, True, mask_logits=True), (images, kernels), FILES["search_fused"],
             ["images", "kernels"], ["boxes", "score", "mask_logits"])]
    import inspect
    import warnings
    # the TorchScript exporter: torch >= 2.9 defaults to the dynamo one; torch < 2.5 (JetPack 6) has no switch
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    for module, args, name, inputs, outputs in jobs:
        module.eval()  # the exporter restores the wrapper's mode afterwards; it must be eval
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(out / name), input_names=inputs, output_names=outputs,
                              dynamic_axes={n: batch for n in inputs + outputs}, opset_version=OPSET,
                              do_constant_folding=True, **legacy)
    net.eval()
    (out / MANIFEST).write_text(json.dumps({"config": net.config.to_dict(), "opset": OPSET, "files": FILES,
                                            "source": source}, indent=2))
    return out


def read_manifest(model_dir: Union[str, Path]) -> Dict:
    """The export folder's manifest (config, opset, graph files); BackendError if it or a graph is missing."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise BackendError(f"{model_dir}: no {MANIFEST}; export with `ar-refine export onnx OUT_DIR "
                           "[--checkpoint C]`")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise BackendError(f"{path}: not a valid manifest ({err}); export again") from None
    missing = [f for f in data.get("files", FILES).values() if not (Path(model_dir) / f).is_file()]
    if missing:
        raise BackendError(f"{model_dir}: missing {missing}; export again")
    return data


class OnnxRuntimeBackend:
    """Runs the exported graphs with ONNX Runtime (CPU, or CUDA when the provider is installed)."""

    def __init__(self, model_dir: Union[str, Path], device: str = "cpu", threads: int = 0, int8: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                               "(or onnxruntime-gpu)") from None
        manifest = read_manifest(model_dir)
        self.config = NetConfig.from_dict(manifest["config"])
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("device cuda needs onnxruntime-gpu (CUDAExecutionProvider is not available)")
            providers.insert(0, "CUDAExecutionProvider")
        opts = session_options(threads)
        files = dict(manifest.get("files", FILES))
        if int8 and "search_box_int8" not in files:
            raise BackendError(f"{model_dir}: no int8 graph; export with `ar-refine export onnx --int8`")
        int8_graphs = set()
        for graph in INT8_FILES:  # int8 replaces the graphs it has (older exports: the box graph only)
            name = files.pop(graph + "_int8", None)
            if int8 and name:
                files[graph] = name
                int8_graphs.add(graph)
        try:
            self.sessions = {k: ort.InferenceSession(str(Path(model_dir) / f), opts, providers=providers)
                             for k, f in files.items()}
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"{model_dir}: cannot load ONNX model ({type(err).__name__}: {err})") from None
        # search(mask_logits=True) can stop before the upsampling; with int8, only where that graph is int8 as
        # well when the box+mask one is (else fused boxes would run fp32 where the box+mask graph runs int8)
        self.mask_logits = "search_fused" in self.sessions and \
            ("search_fused" in int8_graphs or "search_mask" not in int8_graphs)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().cpu().numpy())

    def template(self, images: torch.Tensor) -> torch.Tensor:
        (kernels,) = self.sessions["template"].run(None, {"images": self._np(images)})
        return torch.from_numpy(kernels)

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        """``AlphaRefineNet.search``; ``mask_logits`` only where :attr:`mask_logits` says the export has it."""
        graph = ("search_fused" if mask_logits else "search_mask") if with_mask else "search_box"
        outs = self.sessions[graph].run(None, {"images": self._np(images), "kernels": self._np(kernels)})
        result = {"boxes": torch.from_numpy(outs[0]), "score": torch.from_numpy(outs[1])}
        if with_mask:
            result["mask_logits" if mask_logits else "mask"] = torch.from_numpy(outs[2])
        return result


def max_box_difference(net: AlphaRefineNet, model_dir: Union[str, Path], batch: int = 3,
                       seed: Optional[int] = 0) -> float:
    """Largest |torch - onnxruntime| box coordinate (crop px) on random crops: the export check."""
    gen = torch.Generator().manual_seed(seed or 0)
    size = net.config.input_size
    images = torch.randn(batch, 3, size, size, generator=gen)
    backend = OnnxRuntimeBackend(model_dir)
    net = net.float().eval().to("cpu", memory_format=torch.contiguous_format)
    with torch.no_grad():
        ref = net.search(images, net.template(images))["boxes"]
    ort_boxes = backend.search(images, backend.template(images))["boxes"]
    return float((ref - ort_boxes).abs().max())


INT8_FILES = {"search_box": "search_box_int8.onnx", "search_mask": "search_mask_int8.onnx",
              "search_fused": "search_fused_int8.onnx"}
INT8_FILE = INT8_FILES["search_box"]
MASK_MIN_IOU = 0.9  # an int8 graph's masks (search_mask: > 0.5; search_fused: logits > 0) must overlap fp32's
                   # this much on average
#: What int8 quantises (ONNX node-name prefixes): the backbone and the feature convolutions of the neck and
#: heads. Kept in fp32: the correlation and its channel attention, the corner score maps (conv5, the fine
#: branches' ``out``) and their soft-argmax, the mask's last convolution (its logits). Quantising everything
#: moved boxes to IoU 0.93 vs fp32; the backbone alone or these layers with it: 0.955 on the shipped model's
#: calibration crops either way, and these layers take a quarter off the box+mask graph's time.
INT8_LAYERS = ("/feature_extractor/", "/neck/post_corr/", "/feat_adjust",
               *(f"/corner_head/conv{i}_{c}/" for i in range(1, 5) for c in ("tl", "br")),
               *(f"/corner_head/fine_{c}/{part}/" for c in ("tl", "br") for part in ("skip", "mix")),
               *(f"/mask_head/{part}/" for part in ("h0", "h1", "h2", "v0", "v1", "v2", "post0", "post1")))


def quantize_int8(model_dir: Union[str, Path], calibration: "list", min_iou: float = 0.95) -> float:
    """Static int8 quantisation (QDQ, per-channel) of the search graphs' backbone and feature layers
    (:data:`INT8_LAYERS`) with ONNX Runtime.

    ``calibration`` is a list of (images, kernels) float32 numpy batches (e.g. synthetic crops). The box
    graph is kept only if its boxes agree with the fp32 graph (mean IoU >= ``min_iou`` on the calibration
    crops), else BackendError; each graph with a mask (``search_mask``: masks; ``search_fused``: the boxes of
    ``box_mode: fused``) only if its boxes agree as well and its masks to mean IoU >= :data:`MASK_MIN_IOU`,
    else its fp32 graph stays in use. Returns the box graph's mean IoU. The manifest then lists
    ``search_box_int8`` (and ``search_mask_int8``, ``search_fused_int8``).
    """
    try:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise BackendError("int8 needs onnxruntime's quantization tools (pip install onnxruntime onnx)") from None
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"images": item[0], "kernels": item[1]}

    import onnx
    import onnxruntime as ort
    stem = BACKBONES[NetConfig.from_dict(manifest["config"]).backbone].int8_fp32_convs
    agreement = {}
    for graph, name in INT8_FILES.items():
        if graph not in manifest["files"]:
            continue  # an export from before that graph existed (search_fused)
        src = model_dir / manifest["files"][graph]
        pre = model_dir / f"{graph}_pre.onnx"
        out = model_dir / name
        try:
            quant_pre_process(str(src), str(pre), auto_merge=True)  # upsampled batch dims: floor(1.0*batch)
            # the backbone and the heads' feature layers (INT8_LAYERS): the unnormalised correlation and the
            # score maps lose too much in int8
            nodes = onnx.load(str(pre)).graph.node
            keep_fp32 = [n.name for n in nodes if not n.name.startswith(INT8_LAYERS)]
            keep_fp32 += [n.name for n in nodes if n.op_type == "Conv" and
                          n.name.startswith("/feature_extractor/")][:stem]
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep_fp32)
        finally:
            if pre.exists():
                pre.unlink()
        fp32 = ort.InferenceSession(str(src), session_options(), providers=["CPUExecutionProvider"])
        int8 = ort.InferenceSession(str(out), session_options(), providers=["CPUExecutionProvider"])
        ious, mask_ious = [], []
        for images, kernels in calibration:
            a = fp32.run(None, {"images": images, "kernels": kernels})
            b = int8.run(None, {"images": images, "kernels": kernels})
            ious.append(_iou_xyxy(a[0], b[0]))
            if len(a) > 2:
                cut = 0.0 if graph == "search_fused" else 0.5  # logits there, probabilities in search_mask
                ma, mb = a[2] > cut, b[2] > cut
                union = (ma | mb).sum(axis=(1, 2, 3))
                mask_ious.append(np.where(union > 0, (ma & mb).sum(axis=(1, 2, 3)) / np.maximum(union, 1), 1.0))
        agreement[graph] = float(np.mean(np.concatenate(ious)))
        masks_agree = not mask_ious or float(np.mean(np.concatenate(mask_ious))) >= MASK_MIN_IOU
        if agreement[graph] < min_iou or not masks_agree:
            out.unlink()
            manifest["files"].pop(graph + "_int8", None)  # a re-quantised folder: the old entry goes too
            if graph == "search_box":
                raise BackendError(f"int8 boxes agree with fp32 only to mean IoU {agreement[graph]:.3f} "
                                   f"(< {min_iou}); not kept")
            continue  # masks and fused boxes stay on the fp32 box+mask graph
        manifest["files"][graph + "_int8"] = name
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return agreement["search_box"]


def drop_int8(model_dir: Union[str, Path]) -> None:
    """Remove the int8 graph from an export folder (file and manifest entry)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    for graph in INT8_FILES:
        name = manifest["files"].pop(graph + "_int8", None)
        if name and (model_dir / name).exists():
            (model_dir / name).unlink()
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from ..engine.boxes import iou_rows
    to_xywh = lambda t: np.concatenate([t[:, :2], t[:, 2:] - t[:, :2]], axis=1)  # noqa: E731
    return iou_rows(to_xywh(a), to_xywh(b))


def calibration_batches(model_dir: Union[str, Path], n_batches: int = 16, batch: int = 4, seed: int = 0) -> list:
    """(images, kernels) batches from synthetic training-style pairs, kernels from the fp32 template graph."""
    from ..train.sampler import PairSampler, SamplerConfig, synthetic_pairs
    backend = OnnxRuntimeBackend(model_dir)
    sampler = PairSampler(synthetic_pairs(seed_range=(91_000, 94_000)),
                          SamplerConfig(input_size=backend.config.input_size, gray_prob=0.0, brightness=0.0))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        b = sampler.batch(rng, batch)
        kernels = backend.template(b["template"]).numpy()
        out.append((np.ascontiguousarray(b["search"].numpy()), kernels))
    return out
