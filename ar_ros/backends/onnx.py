"""The ONNX Runtime backend over an export folder (made by :mod:`.onnx_export`), and the folder's manifest.

The template graph runs once per target; the search graph takes the cached kernels, so exported
models keep the engine's caching. ``search_box.onnx`` computes boxes and scores only;
``search_mask.onnx`` adds the mask branch; ``search_fused.onnx`` is ``search_mask`` stopped before the
mask's last upsampling (``mask_logits`` at the decoder's last stride, S/2; S/4 for ``slim4``): what
``box_mode: fused`` needs for its boxes when no mask is asked for (docs/performance.md has the saving).
Exports without it (older ar_ros) run ``search_mask`` for those boxes. Opset 17 (TensorRT 8.6+ and 10
read it).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch

from ..model import NetConfig
from .base import BackendError, SearchBackend

OPSET = 17
MANIFEST = "ar_ros_onnx.json"
FILES = {"template": "template.onnx", "search_box": "search_box.onnx", "search_mask": "search_mask.onnx",
         "search_fused": "search_fused.onnx"}
INT8_FILES = {"search_box": "search_box_int8.onnx", "search_mask": "search_mask_int8.onnx",
              "search_fused": "search_fused_int8.onnx"}


def session_options(threads: int = 0):
    """ONNX Runtime session options: ``threads`` intra-op threads (0 = its default), no spinning after a run.

    ONNX Runtime's pool threads keep spinning for a while after each run. A Refiner holds three sessions,
    and two refiners in one process (fp32 and int8, or torch and ONNX Runtime) then fight over the cores
    (docs/performance.md has the measurement). Alone, a graph runs as fast either way (spinning stays on
    during a run).
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


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


CUDA_PROVIDER = "CUDAExecutionProvider"


def select_providers(device: str, available: Sequence[str], gpu_present: bool) -> Tuple[list, torch.device, str]:
    """(ONNX Runtime providers, the device they run on, a warning or '') for ``device`` (as the user gave it:
    ``auto``, ``cpu``, ``cuda``, ``cuda:N``) and the providers this onnxruntime has.

    ``auto`` takes the CUDA provider where it is installed and CPU otherwise, with a warning when a GPU is
    present (PyPI's ``onnxruntime`` is CPU-only: ``onnxruntime-gpu`` has the CUDA provider); an explicit
    ``cuda`` without the provider is refused, never run on CPU instead."""
    cpu = ["CPUExecutionProvider"]
    if device == "cpu":
        return cpu, torch.device("cpu"), ""
    if device == "auto":
        if CUDA_PROVIDER in available:
            return [(CUDA_PROVIDER, {"device_id": 0})] + cpu, torch.device("cuda", 0), ""
        note = ("device auto: this onnxruntime has no CUDA provider (PyPI's onnxruntime is CPU-only; install "
                "onnxruntime-gpu), so the ONNX graphs run on CPU") if gpu_present else ""
        return cpu, torch.device("cpu"), note
    dev = torch.device(device)
    if dev.type != "cuda":
        raise BackendError(f"backend 'onnxruntime' runs on 'cpu' or 'cuda[:N]', not {device!r}")
    if CUDA_PROVIDER not in available:
        raise BackendError(f"device {device!r} needs onnxruntime-gpu: this onnxruntime has only "
                           f"{', '.join(available)} (PyPI's onnxruntime is CPU-only); or set device 'cpu'")
    index = dev.index or 0
    return [(CUDA_PROVIDER, {"device_id": index})] + cpu, torch.device("cuda", index), ""


def provider_problem(device: torch.device, session_providers: Sequence[str]) -> str:
    """Why a session meant for CUDA does not run there ('' when it does): onnxruntime quietly drops a CUDA
    provider whose libraries (CUDA, cuDNN) do not load and runs on CPU."""
    if device.type == "cuda" and (not session_providers or session_providers[0] != CUDA_PROVIDER):
        return (f"onnxruntime's CUDA provider did not load (the session runs {list(session_providers)}): check "
                "that its CUDA and cuDNN libraries are installed, or set device 'cpu' to run on CPU")
    return ""


class OnnxRuntimeBackend(SearchBackend):
    """Runs the exported graphs with ONNX Runtime (CPU, or CUDA when the provider is installed); takes fp32
    crops on the host in NCHW. ``int8`` runs the int8 graphs of the folder where it has them."""

    name = "onnxruntime"

    def __init__(self, model_dir: Union[str, Path], device: str = "cpu", threads: int = 0, int8: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime "
                               "(or onnxruntime-gpu)") from None
        manifest = read_manifest(model_dir)
        self.config = NetConfig.from_dict(manifest["config"])
        self.meta = {"source": f"onnx:{model_dir}"}
        self.name = "onnxruntime-int8" if int8 else "onnxruntime"
        self.precision = "int8" if int8 else "fp32"
        self.precision_note = f"{self.precision}: the export's {'int8' if int8 else 'fp32'} graphs"
        providers, self.device, note = select_providers(device, ort.get_available_providers(),
                                                        torch.cuda.is_available())
        if note:
            warnings.warn(note)
            self.meta["device_note"] = note
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
        problem = provider_problem(self.device, self.sessions["search_box"].get_providers())
        if problem:
            raise BackendError(problem)
        # search(mask_logits=True) can stop before the upsampling; with int8, only where that graph is int8 as
        # well when the box+mask one is (else fused boxes would run fp32 where the box+mask graph runs int8)
        self.mask_logits = "search_fused" in self.sessions and \
            ("search_fused" in int8_graphs or "search_mask" not in int8_graphs)
        self.quality = "quality" in [o.name for o in self.sessions["search_box"].get_outputs()]

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
        session = self.sessions[graph]
        outs = session.run(None, {"images": self._np(images), "kernels": self._np(kernels)})
        return {out.name: torch.from_numpy(value) for out, value in zip(session.get_outputs(), outs)}


