"""ONNX export: template and search as separate graphs with a dynamic batch, and their int8 versions.

The template graph runs once per target; the search graph takes the cached kernels, so exported
models keep the engine's caching. ``search_box.onnx`` computes boxes and scores only;
``search_mask.onnx`` adds the mask branch; ``search_fused.onnx`` is ``search_mask`` stopped before the
mask's last upsampling (``mask_logits`` at the decoder's last stride, S/2; S/4 for ``slim4``): what
``box_mode: fused`` needs for its boxes when no mask is asked for. Opset 17 (TensorRT 8.6+ and 10 read it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..model import AlphaRefineNet, NetConfig
from ..model.backbone import BACKBONES
from ..model.network import SearchTensors
from .base import BackendError
from .onnx import FILES, INT8_FILES, MANIFEST, OPSET, OnnxRuntimeBackend, read_manifest, session_options


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
    # ignore: torch's stubs leave memory_format out of Module.to's overloads
    net = net.float().eval().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    size = net.config.input_size
    images = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        kernels = net.template(images)
    batch = {0: "batch"}
    searches = {"search_box": SearchTensors(net, False), "search_mask": SearchTensors(net, True),
                "search_fused": SearchTensors(net, True, mask_logits=True)}
    # (module, its inputs, file name, input names, output names)
    jobs: List[Tuple[nn.Module, Tuple[torch.Tensor, ...], str, List[str], List[str]]] = [
        (_Template(net), (images,), FILES["template"], ["images"], ["kernels"])]
    jobs += [(module, (images, kernels), FILES[graph], ["images", "kernels"], list(module.output_names))
             for graph, module in searches.items()]
    import inspect
    import warnings
    # the TorchScript exporter: torch >= 2.9 defaults to the dynamo one; torch < 2.5 (JetPack 6) has no switch
    legacy: Dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
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


def max_box_difference(net: AlphaRefineNet, model_dir: Union[str, Path], batch: int = 3,
                       seed: Optional[int] = 0) -> float:
    """Largest |torch - onnxruntime| box coordinate (crop px) on random crops: the export check."""
    gen = torch.Generator().manual_seed(seed or 0)
    size = net.config.input_size
    images = torch.randn(batch, 3, size, size, generator=gen)
    backend = OnnxRuntimeBackend(model_dir)
    net = net.float().eval().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    with torch.no_grad():
        ref = net.search(images, net.template(images))["boxes"]
    ort_boxes = backend.search(images, backend.template(images))["boxes"]
    return float((ref - ort_boxes).abs().max())


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
        names = [o.name for o in fp32.get_outputs()]
        mask_at = next((i for i, n in enumerate(names) if n in ("mask", "mask_logits")), None)
        for images, kernels in calibration:
            a = fp32.run(None, {"images": images, "kernels": kernels})
            b = int8.run(None, {"images": images, "kernels": kernels})
            ious.append(_iou_xyxy(a[0], b[0]))
            if mask_at is not None:
                cut = 0.0 if graph == "search_fused" else 0.5  # logits there, probabilities in search_mask
                ma, mb = a[mask_at] > cut, b[mask_at] > cut
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
    """Row-wise IoU of two (N,4) x1,y1,x2,y2 box arrays."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    area = lambda t: np.clip(t[:, 2] - t[:, 0], 0, None) * np.clip(t[:, 3] - t[:, 1], 0, None)  # noqa: E731
    inter = w * h
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)
