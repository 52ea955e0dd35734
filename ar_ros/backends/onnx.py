"""ONNX export (template and search as separate graphs, dynamic batch) and an ONNX Runtime backend.

The template graph runs once per target; the search graph takes the cached kernels, so exported
models keep the engine's caching. ``search_box.onnx`` computes boxes and scores only;
``search_mask.onnx`` adds the mask branch. Opset 17 (TensorRT 8.6+ and 10 read it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from ..model import AlphaRefineNet, NetConfig

OPSET = 17
MANIFEST = "ar_ros_onnx.json"
FILES = {"template": "template.onnx", "search_box": "search_box.onnx", "search_mask": "search_mask.onnx"}


class BackendError(RuntimeError):
    """A backend that cannot be used here: missing package, missing or stale model files."""


class _Template(nn.Module):
    def __init__(self, net: AlphaRefineNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.template(images)


class _Search(nn.Module):
    def __init__(self, net: AlphaRefineNet, with_mask: bool) -> None:
        super().__init__()
        self.net, self.with_mask = net, with_mask

    def forward(self, images: torch.Tensor, kernels: torch.Tensor):
        out = self.net.search(images, kernels, with_mask=self.with_mask)
        return (out["boxes"], out["score"], out["mask"]) if self.with_mask else (out["boxes"], out["score"])


def export_onnx(net: AlphaRefineNet, out_dir: Union[str, Path], source: str = "") -> Path:
    """Write the three graphs and a manifest into ``out_dir``; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = net.float().eval().to("cpu", memory_format=torch.contiguous_format)
    size = net.config.input_size
    images = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        kernels = net.template(images)
    batch = {0: "batch"}
    jobs = [(_Template(net), (images,), FILES["template"], ["images"], ["kernels"]),
            (_Search(net, False), (images, kernels), FILES["search_box"], ["images", "kernels"], ["boxes", "score"]),
            (_Search(net, True), (images, kernels), FILES["search_mask"], ["images", "kernels"],
             ["boxes", "score", "mask"])]
    import warnings
    for module, args, name, inputs, outputs in jobs:
        module.eval()  # the exporter restores the wrapper's mode afterwards; it must be eval
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(out / name), input_names=inputs, output_names=outputs,
                              dynamic_axes={n: batch for n in inputs + outputs}, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
    net.eval()
    (out / MANIFEST).write_text(json.dumps({"config": net.config.to_dict(), "opset": OPSET, "files": FILES,
                                            "source": source}, indent=2))
    return out


def read_manifest(model_dir: Union[str, Path]) -> Dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise BackendError(f"{model_dir}: no {MANIFEST}; export with `ar-refine export onnx CHECKPOINT OUT_DIR`")
    data = json.loads(path.read_text())
    missing = [f for f in data.get("files", FILES).values() if not (Path(model_dir) / f).is_file()]
    if missing:
        raise BackendError(f"{model_dir}: missing {missing}; export again")
    return data


class OnnxRuntimeBackend:
    """Runs the exported graphs with ONNX Runtime (CPU, or CUDA when the provider is installed)."""

    def __init__(self, model_dir: Union[str, Path], device: str = "cpu", threads: int = 0) -> None:
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
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        files = manifest.get("files", FILES)
        try:
            self.sessions = {k: ort.InferenceSession(str(Path(model_dir) / f), opts, providers=providers)
                             for k, f in files.items()}
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"{model_dir}: cannot load ONNX model ({type(err).__name__}: {err})") from None

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().cpu().numpy())

    def template(self, images: torch.Tensor) -> torch.Tensor:
        (kernels,) = self.sessions["template"].run(None, {"images": self._np(images)})
        return torch.from_numpy(kernels)

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False) -> Dict[str, torch.Tensor]:
        session = self.sessions["search_mask" if with_mask else "search_box"]
        outs = session.run(None, {"images": self._np(images), "kernels": self._np(kernels)})
        result = {"boxes": torch.from_numpy(outs[0]), "score": torch.from_numpy(outs[1])}
        if with_mask:
            result["mask"] = torch.from_numpy(outs[2])
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
