"""The inference engine: cached template kernels per target, one batched forward pass per frame."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch

from ..backends.factory import DEFAULT_CHECKPOINT, open_backend
from ..io.images import MIN_SIDE
from ..model import AlphaRefineNet
from ..options import COLORS, DEFAULTS, check
from . import crop as cropping
from .batch import CropBatcher
from .device_crop import DeviceCropper, to_host
from .boxes import Box, as_box, box_problem, check_box, iou
from .quality import LostState, choose
from .masks import (FUSE_MASK_WEIGHT, FUSE_MIN_IOU, LOGIT_THRESHOLDS, crop_mask_box, fuse_boxes, logits_mask_box,
                    mask_to_box, resolve_box_mode)

__all__ = ["DEFAULT_CHECKPOINT", "Refiner", "Result", "check_frame", "passed_through"]


@dataclass
class Result:
    """One target's refinement on one frame."""

    box: Box                                   # refined (or, on fallback, the base) box, x,y,w,h frame px
    score: float                               # with a quality head: the predicted IoU of ``box``'s refined
                                               # box with the true box; else the corner peaks' sharpness 0..1
                                               # (0 on fallback from bad input)
    base_box: Box                              # the box that was refined
    fallback: bool = False                     # True when ``box`` is the base box, see ``reason``
    reason: str = ""                           # why the refinement was rejected
    kept: bool = False                         # True when ``box`` is the base box because it is as good:
                                               # predicted better (quality head, reason "base better") or
                                               # agreeing with the refined box (IoU > keep_iou)
    raw_box: Optional[Box] = None              # the network's box before the plausibility gate
    mask: Optional[np.ndarray] = None          # HxW float32 probabilities when asked for
    mask_box: Optional[Box] = None             # tight box of the largest mask region
    polygon: Optional[np.ndarray] = field(default=None, repr=False)  # (4,2) rotated rectangle of that region
    base_quality: Optional[float] = None       # quality head: predicted IoU of the base box with the true box
                                               # (``score`` is then the refined box's predicted IoU)
    lost: bool = False                         # quality head: quality below lost_quality for lost_frames
                                               # frames in a row (reset by set_target)


def passed_through(box: Sequence[float], reason: str) -> Result:
    """A base box that is not refined (e.g. invalid, over max_targets): kept as it came, flagged as a
    fallback with ``reason``; NaN when it is not 4 numbers."""
    kept = tuple(float(v) for v in box) if len(box) == 4 else (math.nan,) * 4
    return Result(box=kept, score=0.0, base_box=kept, fallback=True, reason=reason)  # type: ignore[arg-type]


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

    ``checkpoint`` is a path (ours, the authors' ``.pth.tar`` or a state_dict), an :class:`AlphaRefineNet`,
    ``None`` for the shipped default, or an export folder for the exported backends. Every keyword and its
    default is a row of the one options table (``ar_ros/options.py``, the README's parameter table): the
    node and the CLI take the same values. The backend that runs the network (``backend``, ``device``,
    ``precision``, ``cuda_graphs``, ``cpu_graphs``; ``fold_batchnorm=False`` / ``channels_last=False`` keep
    the unmodified network, e.g. to time it) comes from ``backends.factory.open_backend``; the Refiner
    keeps what is its own: crops, targets' kernels, batching, the plausibility gate and the results.
    ``keep_iou`` > 0 keeps the base box (``Result.kept``) when the refined box overlaps it by more than that
    IoU. ``box_mode="fused"`` also runs the mask branch and moves the corner head's box towards the mask's
    box where the two agree; ``"auto"`` is ``fused`` for a network with the slim mask decoder (the shipped
    one) and ``corner`` otherwise (the authors' weights: their ``refine()``). Call :meth:`warm_up` once
    before the first frame: backends that build per-shape graphs build them there.
    """

    def __init__(self, checkpoint: Union[None, str, os.PathLike, AlphaRefineNet] = None,
                 device: str = DEFAULTS["device"], precision: str = DEFAULTS["precision"],
                 crop_mode: Optional[str] = None, search_factor: Optional[float] = None,
                 min_score: float = DEFAULTS["min_score"], max_scale_change: float = DEFAULTS["max_scale_change"],
                 mask_threshold: float = DEFAULTS["mask_threshold"], channels_last: bool = True,
                 backend: str = DEFAULTS["backend"], fold_batchnorm: bool = True,
                 cuda_graphs: bool = DEFAULTS["cuda_graphs"], max_batch: int = DEFAULTS["max_batch"],
                 keep_iou: float = DEFAULTS["keep_iou"], box_mode: str = DEFAULTS["box_mode"],
                 cpu_graphs: bool = DEFAULTS["cpu_graphs"], quality_margin: float = DEFAULTS["quality_margin"],
                 lost_quality: float = DEFAULTS["lost_quality"], lost_frames: int = DEFAULTS["lost_frames"],
                 reseed_below: float = DEFAULTS["reseed_below"]) -> None:
        check(min_score=float(min_score), max_scale_change=float(max_scale_change), keep_iou=float(keep_iou),
              box_mode=box_mode, crop_mode=crop_mode or "", mask_threshold=float(mask_threshold),
              search_factor=float(search_factor or 0.0), max_batch=int(max_batch),
              quality_margin=float(quality_margin), lost_quality=float(lost_quality), lost_frames=int(lost_frames),
              reseed_below=float(reseed_below))
        self.runner = open_backend(checkpoint, device, precision, backend, cuda_graphs=cuda_graphs,
                                   cpu_graphs=cpu_graphs, fold_batchnorm=fold_batchnorm, channels_last=channels_last)
        self.backend, self.config, self.meta = backend, self.runner.config, self.runner.meta
        self.device, self.precision_note = self.runner.device, self.runner.precision_note
        self.crop_mode = crop_mode or self.config.crop_mode
        self.search_factor = float(search_factor or self.config.search_factor)
        self.input_size = self.config.input_size
        self.min_score, self.max_scale_change = float(min_score), float(max_scale_change)
        self.keep_iou, self.box_mode, self.mask_threshold = float(keep_iou), box_mode, float(mask_threshold)
        self.quality_margin, self.lost_quality, self.lost_frames = float(quality_margin), float(lost_quality), \
            int(lost_frames)  # used where the network has a quality head (engine/quality.py)
        self.reseed_below = float(reseed_below)  # closed loops (eval, replay): quality.trusted(result, this)
        self.fuse_min_iou, self.fuse_weight = FUSE_MIN_IOU, FUSE_MASK_WEIGHT  # box_mode "fused" (tools/ sweep them)
        # crops per forward pass: bounds memory however many targets come in (TensorRT engines have a maximum)
        self.max_batch = min(int(max_batch), self.runner.max_batch)
        # on a GPU, all crops of a frame cut and normalised there in one gather (engine/device_crop.py)
        batcher = DeviceCropper if self.runner.input_device.type == "cuda" else CropBatcher
        self._crops = batcher(self.runner.input_device, self.runner.input_dtype, self.runner.memory_format)
        self._kernels: Dict[Hashable, torch.Tensor] = {}
        self._lost: Dict[Hashable, LostState] = {}  # per target, with a quality head
        self.passes = 0            # forward passes over search crops (one per refine call with targets,
                                   # more when a call has over max_batch of them)
        self.last_batch_size = 0

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the crops the backend takes."""
        return self.runner.input_dtype

    @property
    def net(self):
        """The network the backend runs (the backend itself where it has no torch network)."""
        return getattr(self.runner, "net", self.runner)

    @property
    def graphs(self):
        """The CPU graphs of the torch CPU backend (None elsewhere)."""
        return getattr(self.runner, "graphs", None)

    def resolved_box_mode(self, box_mode: Optional[str] = None) -> str:
        """``corner`` or ``fused``: what ``box_mode`` (default: this refiner's) means for its network."""
        return resolve_box_mode(self.box_mode if box_mode is None else box_mode, self.config.mask_head)

    # ------------------------------------------------------------------ targets
    @property
    def targets(self) -> List[Hashable]:
        """Ids with a cached template, in the order they were set."""
        return list(self._kernels)

    def set_target(self, frame: np.ndarray, box: Iterable[float], target_id: Hashable = "0",
                   color: str = "rgb") -> Result:
        """Compute and cache the template kernel of ``target_id`` from its box on ``frame``; returns the
        box refined on that same frame (what the node's set_target service answers). ``color`` is the
        channel order of ``frame``: ``"rgb"`` (ar_ros's readers and ROS images) or ``"bgr"`` (OpenCV)."""
        self.set_targets(frame, {target_id: box}, color=color)
        passes, last = self.passes, self.last_batch_size  # counters count refine calls' passes only
        result = self.refine(frame, {target_id: box}, color=color)[target_id]
        self.passes, self.last_batch_size = passes, last
        return result

    def set_targets(self, frame: np.ndarray, boxes_by_id: Mapping[Hashable, Iterable[float]],
                    color: str = "rgb") -> None:
        """Template kernels of several targets in one template pass (no search: :meth:`refine` them on
        this frame when their first boxes are wanted). Raises ``ValueError`` on a bad box; then no target
        changes."""
        height, width = check_frame(frame)
        _check_color(color)
        boxes = {tid: check_box(b, width, height) for tid, b in boxes_by_id.items()}
        if not boxes:
            return
        windows = [cropping.window_for(b, self.search_factor, self.input_size, self.crop_mode)
                   for b in boxes.values()]
        with torch.inference_mode():
            images = self._crops(frame, windows, color)
            kernels = torch.cat([self.runner.template(images[s:s + self.max_batch])
                                 for s in range(0, len(images), self.max_batch)])
        for i, tid in enumerate(boxes):
            self._kernels[tid] = kernels[i:i + 1].clone()
            self._lost.pop(tid, None)  # a new box: not lost

    def warm_up(self, max_targets: int = 1) -> None:
        """Before the first frame: the backend builds what it builds per shape (CPU / CUDA graphs) for 1 ..
        ``max_targets`` targets in this box mode, then one template and search pass on a blank frame, so
        the first real frames are not slow. Targets and counters are left as they were."""
        self.runner.warm_up(range(1, max(int(max_targets), 1) + 1), self.resolved_box_mode() == "fused")
        frame = np.zeros((64, 64, 3), np.uint8)
        tid, box = object(), (16.0, 16.0, 32.0, 32.0)  # an id no caller can have
        try:
            self.set_target(frame, box, tid)
        finally:
            self.clear(tid)

    def close(self) -> None:
        """Let go of what the backend holds beyond its weights; refining goes on."""
        self.runner.close()

    def clear(self, target_id: Optional[Hashable] = None) -> bool:
        """Forget one target or, with ``None``, all of them. Returns False when ``target_id`` was unknown
        (nothing to forget), True otherwise."""
        if target_id is None:
            self._kernels.clear()
            self._lost.clear()
            return True
        self._lost.pop(target_id, None)
        return self._kernels.pop(target_id, None) is not None

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
                batches.append(self._crops(frame, windows, job_color))
            outputs.append(results)
        if todo:
            fused = self.resolved_box_mode() == "fused"  # read once: the node may change it live
            with_mask = mask or fused
            # fused boxes without masks: the decoder's logits suffice where the backend can stop before its
            # upsampling (an ONNX export with search_fused); the probabilities otherwise
            low, high = LOGIT_THRESHOLDS
            logits = fused and not mask and self.runner.mask_logits and \
                low <= self.mask_threshold <= high
            key = "mask_logits" if logits else "mask"
            with torch.inference_mode():
                kernels = torch.cat([self._kernels[tid] for _, tid, _, _ in todo])
                images = torch.cat(batches) if len(batches) > 1 else batches[0]
                parts = []
                for s in range(0, len(todo), self.max_batch):  # one pass unless over max_batch targets
                    out = self.runner.search(images[s:s + self.max_batch], kernels[s:s + self.max_batch],
                                             with_mask, logits)
                    names = ["boxes", "score"] + ([key] if with_mask else []) + \
                        (["quality", "base_quality"] if self.runner.quality else [])
                    parts.append(to_host(out, names))  # one sync
                    self.passes += 1
            host = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            crop_boxes, scores = host["boxes"], host["score"]
            maps = host[key][:, 0] if with_mask else None  # probabilities or logits
            self.last_batch_size = len(todo)
            for i, (j, tid, base, win) in enumerate(todo):
                height, width = jobs[j][0].shape[:2]
                crop_box = crop_boxes[i]
                if fused:
                    assert maps is not None  # fused implies with_mask
                    mask_box = logits_mask_box(maps[i], self.input_size, self.mask_threshold) if logits else \
                        crop_mask_box(maps[i], self.mask_threshold)
                    if mask_box is not None:
                        mask_box = mask_box + win.mask_offset()
                    crop_box = fuse_boxes(crop_box, mask_box, self.fuse_min_iou, self.fuse_weight)
                quality = (float(host["quality"][i]), float(host["base_quality"][i])) if self.runner.quality \
                    else None
                outputs[j][tid] = self._result(base, win, crop_box, float(scores[i]),
                                               maps[i] if mask and maps is not None else None,  # mask: with_mask
                                               height, width, quality)
                if quality is not None:
                    state = self._lost.setdefault(tid, LostState())
                    state.lost_quality, state.lost_frames = self.lost_quality, self.lost_frames  # live values
                    outputs[j][tid].lost = state.update(quality[0])
        return [{tid: res[tid] for tid in job[1]} for res, job in zip(outputs, jobs)]

    def _result(self, base: Box, window: cropping.CropWindow, crop_xyxy: np.ndarray, score: float,
                prob: Optional[np.ndarray], height: int, width: int,
                quality: Optional[Tuple[float, float]] = None) -> Result:
        refined = cast(Box, tuple(float(v) for v in window.box_to_frame(crop_xyxy)))  # (4,) -> 4 floats
        if quality is not None:  # a quality head: the score is the predicted IoU of the refined box
            score = quality[0]
        reason = self._implausible(base, refined, score, width, height)
        # do no harm: refining a box that is already right moves it by the model's own error. With a quality
        # head the base box is kept where it is predicted to be better (engine/quality.py); without one, where
        # the two agree closely (keep_iou, chosen on the validation suite)
        if quality is not None:
            kept, why = choose(quality[0], quality[1], self.quality_margin)
            kept = kept and not reason
        else:
            kept, why = not reason and 0.0 < self.keep_iou < iou(base, refined), ""
        res = Result(box=base if reason or kept else refined, score=score, base_box=base, fallback=bool(reason),
                     reason=reason or (why if kept else ""), raw_box=refined, kept=kept,
                     base_quality=None if quality is None else quality[1])
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
