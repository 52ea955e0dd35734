"""The inference engine: cached template kernels per target, one batched forward pass per frame."""
from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ..io.images import MIN_SIDE
from ..model import AlphaRefineNet, CheckpointError, load_network
from ..model.fuse import fold_batchnorm as fold_batchnorm_layers
from . import crop as cropping
from .boxes import Box, as_box, box_problem, check_box, iou
from .masks import (BOX_MODES, DEFAULT_BOX_MODE, FUSE_MASK_WEIGHT, FUSE_MIN_IOU, LOGIT_THRESHOLDS, crop_mask_box,
                    fuse_boxes, logits_mask_box, mask_to_box, resolve_box_mode)
from .graphs import SearchGraphs, graphs_available
from .precision import auto_cpu_precision, is_prepared, pack_fp32, resolve_precision, to_bf16

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "weights" / "ar_ros_default.pt"
COLORS = ("rgb", "bgr")
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")


@dataclass
class Result:
    """One target's refinement on one frame."""

    box: Box                                   # refined (or, on fallback, the base) box, x,y,w,h frame px
    score: float                               # refiner confidence 0..1 (0 on fallback from bad input)
    base_box: Box                              # the box that was refined
    fallback: bool = False                     # True when ``box`` is the base box, see ``reason``
    reason: str = ""                           # why the refinement was rejected
    kept: bool = False                         # True when ``box`` is the base box because the refined box
                                               # agreed with it (IoU > keep_iou): a good box stays good
    raw_box: Optional[Box] = None              # the network's box before the plausibility gate
    mask: Optional[np.ndarray] = None          # HxW float32 probabilities when asked for
    mask_box: Optional[Box] = None             # tight box of the largest mask region
    polygon: Optional[np.ndarray] = field(default=None, repr=False)  # (4,2) rotated rectangle of that region


def passed_through(box: Sequence[float], reason: str) -> Result:
    """A base box that is not refined (e.g. invalid, over max_targets): kept as it came, flagged as a
    fallback with ``reason``; NaN when it is not 4 numbers."""
    kept = tuple(float(v) for v in box) if len(box) == 4 else (math.nan,) * 4
    return Result(box=kept, score=0.0, base_box=kept, fallback=True, reason=reason)  # type: ignore[arg-type]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else must exist on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def cuda_graphs_problem(backend: str, device: torch.device) -> str:
    """Why CUDA graphs cannot be used with this backend and device ('' when they can)."""
    if backend == "torch" and device.type == "cuda":
        return ""
    return f"cuda_graphs needs backend 'torch' on device 'cuda' (got {backend!r} on {device.type!r})"


def check_frame(frame: np.ndarray) -> Tuple[int, int]:
    """An HxWx3 uint8 array, or a ``ValueError`` that says what is wrong. Returns (height, width)."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be HxWx3, got shape {frame.shape}")
    if frame.shape[0] < MIN_SIDE or frame.shape[1] < MIN_SIDE:
        raise ValueError(f"frame is too small: {frame.shape[1]}x{frame.shape[0]}")
    return frame.shape[0], frame.shape[1]


class Refiner:
    """Refine boxes of a base tracker with an Alpha-Refine network.

    ``checkpoint`` is a path (ours, the authors' ``.pth.tar`` or a state_dict), an
    :class:`AlphaRefineNet`, or ``None`` for the shipped default. ``crop_mode`` defaults to the mode the
    weights were trained with (``exact`` for the authors' weights, ``clean`` for ours). With the torch
    backend, BatchNorm layers are folded into the convolutions of a private copy of the network
    (``fold_batchnorm=False`` keeps them, e.g. to time the unmodified network). ``cuda_graphs=True``
    (torch on CUDA) replays each search shape from a captured CUDA graph (backends/cuda_graphs.py).
    On CPU in fp32 (``cpu_graphs=True``, the default) a search shape seen a few times is traced into a
    TorchScript graph that oneDNN Graph compiles and fuses (``engine/graphs.py``; in a background thread
    while eager refines, then about two fifths less time per refinement for the shipped model);
    ``cpu_graphs=False`` keeps the eager network.
    ``keep_iou`` > 0 keeps the base box (``Result.kept``) when the refined box overlaps it by more than
    that IoU, so a box that is already right is not moved by the model's own error (0 = off).
    ``box_mode="fused"`` runs the mask branch on every refinement and moves the corner head's box towards
    the mask's box where the two agree (``engine.masks.fuse_boxes``): more precise, at the mask's cost.
    ``"auto"`` (default) is ``fused`` for a network with the slim mask decoder (the shipped one) and
    ``corner`` otherwise (the authors' weights: their ``refine()``); :meth:`resolved_box_mode` says which.
    """

    def __init__(self, checkpoint: Union[None, str, os.PathLike, AlphaRefineNet] = None, device: str = "cpu",
                 precision: str = "fp32", crop_mode: Optional[str] = None, search_factor: Optional[float] = None,
                 min_score: float = 0.0, max_scale_change: float = 3.0, mask_threshold: float = 0.5,
                 channels_last: bool = True, backend: str = "torch", fold_batchnorm: bool = True,
                 cuda_graphs: bool = False, max_batch: int = 32, keep_iou: float = 0.0,
                 box_mode: str = DEFAULT_BOX_MODE, cpu_graphs: bool = True) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.precision_note = f"{precision}: as requested" if precision != "auto" else \
            f"{str(self.dtype).replace('torch.', '')}: auto on {self.device.type}"  # what was chosen and why
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        problem = cuda_graphs_problem(backend, self.device) if cuda_graphs else ""
        if problem:
            raise ValueError(problem)
        self.backend = backend
        if backend.startswith("onnxruntime"):
            from ..backends.onnx import OnnxRuntimeBackend
            if self.dtype != torch.float32:
                raise ValueError(f"backend '{backend}' runs the exported graphs; use precision 'fp32'")
            if checkpoint is None or isinstance(checkpoint, AlphaRefineNet):
                raise ValueError(f"backend '{backend}' needs checkpoint = a folder from `ar-refine export onnx`")
            # one thread setting for both libraries: ONNX Runtime takes torch's (torch.set_num_threads)
            net = OnnxRuntimeBackend(checkpoint, device=self.device.type, int8=backend.endswith("int8"),
                                     threads=torch.get_num_threads())
            self.meta = {"source": f"onnx:{checkpoint}"}
        elif backend == "tensorrt":
            from ..backends.tensorrt import TensorRTBackend
            if checkpoint is None or isinstance(checkpoint, AlphaRefineNet):
                raise ValueError("backend 'tensorrt' needs checkpoint = a folder from `ar-refine export onnx` "
                                 "with engines from `ar-refine export tensorrt`")
            net = TensorRTBackend(checkpoint, device=str(self.device))
            self.dtype = torch.float32  # engines take fp32 inputs and run fp16 inside
            self.meta = {"source": f"tensorrt:{checkpoint}"}
        elif isinstance(checkpoint, AlphaRefineNet):
            if is_prepared(checkpoint) and not (backend == "torch" and self.device.type == "cpu"
                                                and self.dtype == torch.float32):
                raise ValueError("this network was prepared for CPU fp32 by another Refiner (packed convolutions); "
                                 "pass its checkpoint path or an unprepared AlphaRefineNet for another device or "
                                 "precision")
            net, self.meta = copy.deepcopy(checkpoint), {"source": "network"}  # folding must not touch theirs
        else:
            path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
            if checkpoint is None and not path.is_file():
                raise CheckpointError(f"the built-in default model is missing ({path}); pass checkpoint=...")
            net, self.meta = load_network(path)
        self.config = net.config
        self.crop_mode = crop_mode or self.config.crop_mode
        if self.crop_mode not in cropping.CROP_MODES:
            raise ValueError(f"crop_mode must be one of {cropping.CROP_MODES}, got {self.crop_mode!r}")
        self.search_factor = float(search_factor or self.config.search_factor)
        if not self.search_factor > 1.0:
            raise ValueError(f"search_factor must be > 1, got {self.search_factor}")
        self.input_size = self.config.input_size
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if not max_scale_change > 1.0:
            raise ValueError(f"max_scale_change must be > 1, got {max_scale_change}")
        if not 0.0 <= keep_iou <= 1.0:
            raise ValueError(f"keep_iou must be in [0, 1], got {keep_iou}")
        self.min_score = float(min_score)
        self.max_scale_change = float(max_scale_change)
        self.keep_iou = float(keep_iou)
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        self.box_mode = box_mode
        self.graphs: Optional[SearchGraphs] = None  # CPU fp32: searches as oneDNN Graph graphs (engine/graphs.py)
        self.fuse_min_iou, self.fuse_weight = FUSE_MIN_IOU, FUSE_MASK_WEIGHT  # box_mode "fused" (tools/ sweep them)
        self.mask_threshold = float(mask_threshold)
        self.memory_format = torch.channels_last if channels_last and backend == "torch" else torch.contiguous_format
        if backend == "torch":
            net.eval()
            if precision == "auto" and self.device.type == "cpu":
                self.dtype, self.precision_note = auto_cpu_precision(net)  # keyed by the weights as loaded
            if fold_batchnorm:
                fold_batchnorm_layers(net)  # in fp32, before any cast
            if self.dtype == torch.bfloat16:
                net = to_bf16(net.to(self.device, memory_format=self.memory_format))
            else:
                net = net.to(self.device, dtype=self.dtype, memory_format=self.memory_format)
                if fold_batchnorm and self.device.type == "cpu" and self.dtype == torch.float32 \
                        and self.memory_format == torch.channels_last and not is_prepared(net):
                    plain = net
                    try:  # oneDNN for every convolution (engine/precision.py); on a copy, so a failure keeps net
                        net = pack_fp32(copy.deepcopy(net))
                    except (RuntimeError, ValueError, TypeError, AttributeError) as err:
                        warnings.warn(f"fp32 convolutions not packed, eager torch runs them: {err}")
                    if cpu_graphs and graphs_available():  # searches as oneDNN Graph graphs (engine/graphs.py)
                        self.graphs = SearchGraphs(plain)
            if cuda_graphs:
                from ..backends.cuda_graphs import GraphedSearch
                net = GraphedSearch(net)
        self.net = net
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        # crops per forward pass: bounds memory however many targets come in (TensorRT engines have a maximum)
        self.max_batch = min(int(max_batch), getattr(net, "max_batch", max_batch))
        lut_device = torch.device("cpu") if backend.startswith("onnxruntime") else self.device
        table = cropping.normalisation_table()
        self._lut = torch.from_numpy(table.reshape(-1)).to(lut_device)
        self._lut_cv = np.ascontiguousarray(table.T.reshape(1, 256, 3))  # per-channel table for cv2.LUT
        self._kernels: Dict[Hashable, torch.Tensor] = {}
        self.passes = 0            # forward passes over search crops (one per refine call with targets,
                                   # more when a call has over max_batch of them)
        self.last_batch_size = 0

    def resolved_box_mode(self, box_mode: Optional[str] = None) -> str:
        """``corner`` or ``fused``: what ``box_mode`` (default: this refiner's) means for its network."""
        return resolve_box_mode(self.box_mode if box_mode is None else box_mode, self.config.mask_head)

    # ------------------------------------------------------------------ targets
    @property
    def targets(self) -> List[Hashable]:
        """Ids with a cached template, in the order they were set."""
        return list(self._kernels)

    def set_target(self, frame: np.ndarray, box: Iterable[float], target_id: Hashable = "0",
                   color: str = "rgb") -> None:
        """Compute and cache the template kernel of ``target_id`` from its box on ``frame``."""
        self.set_targets(frame, {target_id: box}, color=color)

    def set_targets(self, frame: np.ndarray, boxes_by_id: Mapping[Hashable, Iterable[float]],
                    color: str = "rgb") -> None:
        """:meth:`set_target` for several targets in one template pass. Raises ``ValueError`` on a bad box."""
        height, width = check_frame(frame)
        _check_color(color)
        boxes = {tid: check_box(b, width, height) for tid, b in boxes_by_id.items()}
        if not boxes:
            return
        windows = [cropping.window_for(b, self.search_factor, self.input_size, self.crop_mode)
                   for b in boxes.values()]
        with torch.inference_mode():
            images = self._batch(frame, windows, color)
            kernels = torch.cat([self.net.template(images[s:s + self.max_batch])
                                 for s in range(0, len(images), self.max_batch)])
        for i, tid in enumerate(boxes):
            self._kernels[tid] = kernels[i:i + 1].clone()

    def warm_up(self, timeout: Optional[float] = 60.0) -> None:
        """Template and search passes on a blank frame, one target, so that the first real frames are not
        slow: with CPU graphs (``cpu_graphs``), as many as build the one-target graph of this box mode,
        waiting at most ``timeout`` seconds for it (None: as long as it takes; a build still under way goes
        on in the background, eager refines meanwhile). Targets and counters are left as they were."""
        frame = np.zeros((64, 64, 3), np.uint8)
        tid, box, passes = object(), (16.0, 16.0, 32.0, 32.0), self.passes  # an id no caller can have
        self.set_target(frame, box, tid)
        try:
            for _ in range(self.graphs.after if self.graphs is not None else 1):
                self.refine(frame, {tid: box})
            if self.graphs is not None:
                self.graphs.wait(timeout)  # built in the background: ready before the first real frame
        finally:
            self.clear(tid)
            self.passes = passes

    def close(self) -> None:
        """Build no more CPU graphs (queued ones dropped; a build under way finishes, so an exiting process
        waits for one at most). Refining goes on, with the graphs there are."""
        if self.graphs is not None:
            self.graphs.close()

    def clear(self, target_id: Optional[Hashable] = None) -> None:
        """Forget one target (``KeyError`` if unknown) or, with ``None``, all of them."""
        if target_id is None:
            self._kernels.clear()
        else:
            try:
                del self._kernels[target_id]
            except KeyError:
                raise KeyError(f"no target {target_id!r}; known: {self.targets}") from None

    # ------------------------------------------------------------------ refinement
    def refine(self, frame: np.ndarray, boxes_by_id: Mapping[Hashable, Iterable[float]], color: str = "rgb",
               mask: bool = False) -> Dict[Hashable, Result]:
        """Refine the base box of each target on ``frame`` in one batched pass.

        Unknown ids raise ``KeyError``. A base box that cannot be refined (NaN, empty, outside the
        frame) and a refinement that fails the plausibility gate both come back as the base box with
        ``fallback=True`` and a ``reason``.
        """
        return self.refine_many([(frame, boxes_by_id)], color=color, mask=mask)[0]

    def refine_many(self, jobs: Sequence[Tuple], color: str = "rgb",
                    mask: bool = False) -> List[Dict[Hashable, Result]]:
        """:meth:`refine` for several frames (e.g. one per camera) in ONE forward pass over all targets.

        ``jobs`` are ``(frame, boxes_by_id)`` pairs, or ``(frame, boxes_by_id, color)`` triples when the
        frames differ in channel order (``color`` is then the default for pairs).
        """
        _check_color(color)
        outputs: List[Dict[Hashable, Result]] = []
        todo = []  # (job index, id, base, window)
        batches = []
        for j, job in enumerate(jobs):
            frame, boxes_by_id = job[0], job[1]
            job_color = job[2] if len(job) > 2 else color
            _check_color(job_color)
            height, width = check_frame(frame)
            unknown = [tid for tid in boxes_by_id if tid not in self._kernels]
            if unknown:
                raise KeyError(f"no template for target(s) {unknown}; call set_target first")
            results: Dict[Hashable, Result] = {}
            windows = []
            for tid, raw in boxes_by_id.items():
                try:
                    base = as_box(raw)
                except ValueError as err:
                    results[tid] = Result(box=(math.nan,) * 4, score=0.0, base_box=(math.nan,) * 4,
                                          fallback=True, reason=str(err))
                    continue
                problem = box_problem(base, width, height)
                if problem:
                    results[tid] = Result(box=base, score=0.0, base_box=base, fallback=True, reason=problem)
                    continue
                win = cropping.window_for(base, self.search_factor, self.input_size, self.crop_mode)
                todo.append((j, tid, base, win))
                windows.append(win)
            if windows:
                batches.append(self._batch(frame, windows, job_color))
            outputs.append(results)
        if todo:
            fused = self.resolved_box_mode() == "fused"  # read once: the node may change it live
            with_mask = mask or fused
            # fused boxes without masks: the decoder's logits suffice where the backend can stop before its
            # upsampling (an ONNX export with search_fused); the probabilities otherwise
            low, high = LOGIT_THRESHOLDS
            logits = fused and not mask and getattr(self.net, "mask_logits", False) and \
                low <= self.mask_threshold <= high
            key = "mask_logits" if logits else "mask"
            with torch.inference_mode():
                kernels = torch.cat([self._kernels[tid] for _, tid, _, _ in todo])
                images = torch.cat(batches) if len(batches) > 1 else batches[0]
                parts = []
                for s in range(0, len(todo), self.max_batch):  # one pass unless over max_batch targets
                    out = self._search(images[s:s + self.max_batch], kernels[s:s + self.max_batch], with_mask,
                                       logits)
                    parts.append([out["boxes"].float().cpu().numpy(), out["score"].float().cpu().numpy(),
                                  out[key][:, 0].float().cpu().numpy() if with_mask else None])
                    self.passes += 1
            crop_boxes, scores = (np.concatenate([p[k] for p in parts]) for k in (0, 1))
            maps = np.concatenate([p[2] for p in parts]) if with_mask else None  # probabilities or logits
            self.last_batch_size = len(todo)
            for i, (j, tid, base, win) in enumerate(todo):
                height, width = jobs[j][0].shape[:2]
                crop_box = crop_boxes[i]
                if fused:
                    mask_box = logits_mask_box(maps[i], self.input_size, self.mask_threshold) if logits else \
                        crop_mask_box(maps[i], self.mask_threshold)
                    if mask_box is not None:
                        mask_box = mask_box + win.mask_offset()
                    crop_box = fuse_boxes(crop_box, mask_box, self.fuse_min_iou, self.fuse_weight)
                outputs[j][tid] = self._result(base, win, crop_box, float(scores[i]),
                                               maps[i] if mask else None, height, width)
        return [{tid: res[tid] for tid in job[1]} for res, job in zip(outputs, jobs)]

    def _search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool,
                mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        """One forward pass: this shape's oneDNN Graph graph where there is one, else the network
        (``mask_logits``: a backend's search that returns ``mask_logits``, see ``refine_many``)."""
        if mask_logits:
            return self.net.search(images, kernels, with_mask=True, mask_logits=True)
        out = self.graphs.search(images, kernels, with_mask) if self.graphs is not None else None
        return out if out is not None else self.net.search(images, kernels, with_mask=with_mask)

    def _batch(self, frame: np.ndarray, windows: List[cropping.CropWindow], color: str) -> torch.Tensor:
        """Crop every window, normalise through the lookup table, return (B,3,S,S) on the device."""
        patches = np.stack([cropping.crop(frame, w) for w in windows])
        if color == "bgr":
            patches = patches[..., ::-1]
        device = self._lut.device
        if device.type == "cpu":  # cv2.LUT: same float32 values as the gather below, ~40x faster on CPU
            b, s = patches.shape[:2]
            flat = cv2.LUT(np.ascontiguousarray(patches).reshape(b * s, s, 3), self._lut_cv).reshape(patches.shape)
            if self.memory_format == torch.contiguous_format:
                # NCHW in numpy: a torch copy of this permuted view wakes torch's thread pool, whose
                # spinning threads then slow the ONNX Runtime call that follows (measured: 5 ms here)
                return torch.from_numpy(np.ascontiguousarray(flat.transpose(0, 3, 1, 2))).to(dtype=self.dtype)
            batch = torch.from_numpy(flat).permute(0, 3, 1, 2)
        else:  # upload uint8 and look up on the GPU
            idx = torch.from_numpy(np.ascontiguousarray(patches)).to(device).long()
            idx += torch.arange(3, device=device) * 256
            batch = self._lut[idx].permute(0, 3, 1, 2)
        # NHWC memory viewed as NCHW == channels_last
        return batch.to(dtype=self.dtype, memory_format=self.memory_format)

    def _result(self, base: Box, window: cropping.CropWindow, crop_xyxy: np.ndarray, score: float,
                prob: Optional[np.ndarray], height: int, width: int) -> Result:
        refined = tuple(float(v) for v in window.box_to_frame(crop_xyxy))
        reason = self._implausible(base, refined, score, width, height)
        # do no harm: refining a box that is already right moves it by the model's own error, so when the
        # two agree closely the base box is kept (keep_iou chosen on the validation suite, README)
        kept = not reason and 0.0 < self.keep_iou < iou(base, refined)
        res = Result(box=base if reason or kept else refined, score=score, base_box=base, fallback=bool(reason),
                     reason=reason, raw_box=refined, kept=kept)  # type: ignore[arg-type]
        if prob is not None:
            res.mask = cropping.paste_mask(prob, window, height, width)
            x1 = max(int(math.floor(window.x0)), 0)
            y1 = max(int(math.floor(window.y0)), 0)
            x2 = min(int(math.ceil(window.x0 + window.size * window.sx)) + 1, width)
            y2 = min(int(math.ceil(window.y0 + window.size * window.sy)) + 1, height)
            res.mask_box, res.polygon = mask_to_box(res.mask, self.mask_threshold, roi=(x1, y1, x2, y2))
        return res

    def _implausible(self, base: Box, refined: Box, score: float, width: int, height: int) -> str:
        """Our plausibility gate (the authors have none): ``""`` when the refined box may replace the base."""
        if not all(math.isfinite(v) for v in refined) or not math.isfinite(score):
            return "network output is not finite"
        x, y, w, h = refined
        if w < 1.0 or h < 1.0:
            return f"refined box is degenerate ({w:.1f}x{h:.1f} px)"
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            return "refined box lies outside the frame"
        k = self.max_scale_change
        for label, ratio in (("width", w / base[2]), ("height", h / base[3])):
            if not 1.0 / k <= ratio <= k:
                return f"{label} changed {ratio:.2f}x (limit {k:g}x)"
        if score < self.min_score:
            return f"score {score:.2f} below min_score {self.min_score:.2f}"
        return ""


def _check_color(color: str) -> None:
    if color not in COLORS:
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
