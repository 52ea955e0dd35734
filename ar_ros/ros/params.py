"""Every node parameter in one table: default, description, range or choices, and whether it is live.

``config/ar_ros.yaml`` mirrors these defaults (a test keeps the two equal). Read-only parameters need a
lifecycle cleanup + configure (or a restart) to change; the others apply to the next frame.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..engine.masks import BOX_MODES, DEFAULT_BOX_MODE


@dataclass(frozen=True)
class Spec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None


PARAMS: Tuple[Spec, ...] = (
    Spec("cameras", None, "Camera names for one node serving several cameras with one model (topics "
         "<cam>/image, <cam>/detections, <cam>/refined/..., services <cam>/set_target ...). Unset = one "
         "camera on image / detections.", read_only=True),
    Spec("checkpoint", "", "Model file: ar_ros checkpoint, the authors' SEcmnet_ep0040-c.pth.tar, or a "
         "state_dict. Empty = the built-in default model.", read_only=True),
    Spec("device", "auto", "auto | cpu | cuda | cuda:N", read_only=True),
    Spec("precision", "auto", "auto (fp16 on CUDA; on CPU bf16 where the CPU has bf16 units and "
         "`ar-refine check-bf16` accepted these weights, else fp32) | fp32 | fp16 (CUDA) | bf16 (CPUs with "
         "AMX, AVX-512 BF16 or Arm BF16).", read_only=True, choices=("auto", "fp32", "fp16", "bf16")),
    Spec("backend", "torch", "torch | onnxruntime | onnxruntime-int8 | tensorrt (checkpoint = a folder from "
         "`ar-refine export onnx [--int8]`; tensorrt also needs `ar-refine export tensorrt`).", read_only=True,
         choices=("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")),
    Spec("cuda_graphs", False, "Replay each search pass from a CUDA graph captured on first use (one per "
         "batch size): less launch overhead on a GPU. torch backend on CUDA only; ignored with a warning "
         "elsewhere.", read_only=True),
    Spec("cpu_graphs", True, "On CPU in fp32: run each search shape as a oneDNN Graph graph, built in the "
         "background once the shape has been seen a few times (about two fifths less time per frame for the "
         "shipped model). false keeps the eager network.", read_only=True),
    Spec("crop_mode", "", "Empty = what the model was trained with; 'exact' = the authors' crop "
         "(use with their weights); 'clean' = ours.", read_only=True, choices=("", "exact", "clean")),
    Spec("search_factor", 0.0, "Search region = factor x box per side. 0 = the model's own (2.0 as in the "
         "paper).", read_only=True, low=0.0, high=10.0),
    Spec("threads", 0, "CPU threads for inference, torch and ONNX Runtime (0 = torch's default).",
         read_only=True, low=0, high=256),
    Spec("image_transport", "raw", "raw: subscribe `image` (sensor_msgs/Image); compressed: subscribe "
         "`image/compressed` (sensor_msgs/CompressedImage, jpeg or png).", read_only=True,
         choices=("raw", "compressed")),
    Spec("mode", "refine", "refine: refine every incoming base box by Detection2D.id. track: targets only "
         "from set_target; detections supply base boxes when they match.", read_only=True,
         choices=("refine", "track")),
    Spec("max_targets", 8, "Most boxes refined per frame (one batch), id-less ones included; the others "
         "come out with their base box, flagged as fallbacks (counted in over_max_targets).", low=1, high=254),
    Spec("min_score", 0.0, "Below this refiner confidence the base box is passed through (fallback).",
         low=0.0, high=1.0),
    Spec("max_scale_change", 3.0, "A refined box whose width or height differs from the base box by more "
         "than this factor is rejected (fallback).", low=1.01, high=100.0),
    Spec("keep_iou", 0.85, "Do no harm: when the refined box overlaps the base box by more than this IoU, "
         "the base box is kept (a box that is already right is not moved by the model's error). 0 = off; "
         "0.85 was chosen for the shipped model on the validation suite (tools/box_mode_sweep.py). Set 0 "
         "when the base tracker takes the refined boxes back (closed loop): there the gate only holds "
         "the loop back.", low=0.0, high=1.0),
    Spec("box_mode", DEFAULT_BOX_MODE, "corner: the corner head's box (the paper's). fused: also run the "
         "mask branch and move the box towards the mask's box where the two agree (more precise; costs the "
         "mask branch on every box). auto: fused with the slim mask decoder (the shipped model: a third of "
         "a box's time on CPU), corner with the authors' (as dear as the box).", choices=BOX_MODES),
    Spec("publish_mask", True, "Publish refined/mask (computed only while someone subscribes)."),
    Spec("mask_mode", "label", "label: pixel value k = k-th detection; binary: union as 0/255.",
         choices=("label", "binary")),
    Spec("mask_threshold", 0.5, "Probability above which a pixel belongs to a target mask.", low=0.0, high=1.0),
    Spec("publish_overlay", True, "Publish refined/overlay (rendered only while someone subscribes)."),
    Spec("publish_targets", True, "Publish refined/targets (ar_ros/RefinedTargetArray: base vs refined, "
         "fallback reasons)."),
    Spec("sync_slop", 0.05, "Seconds (stamp time): when no image has the detections' exact stamp within "
         "sync_wait, the nearest unused one within this window is used.", low=0.0, high=10.0),
    Spec("sync_wait", 0.1, "Seconds (wall time): detections whose image has not arrived yet wait this long "
         "for it before the sync_slop fallback.", low=0.0, high=5.0),
    Spec("detections_timeout", 0.5, "Seconds (wall time), track mode: with no detections received for this "
         "long (no base tracker, or it stopped or died), each frame is refined from the targets' previous "
         "boxes.", low=0.0, high=60.0),
    Spec("image_cache_size", 30, "Frames kept for late detections and set_target calls.", read_only=True,
         low=1, high=1000),
    Spec("max_image_age", 1.0, "Seconds: detections left without an image are counted as stale when older "
         "than the last received image by more than this, else as unmatched.", low=0.0, high=3600.0),
    Spec("target_timeout", 1.0, "Seconds (stamp time): refine mode forgets an id not seen for this long.",
         low=0.0, high=3600.0),
    Spec("autostart", True, "Configure and activate on start (for use without a lifecycle manager).",
         read_only=True),
    Spec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", read_only=True,
         low=0.1, high=60.0),
)

BY_NAME: Dict[str, Spec] = {p.name: p for p in PARAMS}


def default_keep_iou(loop: str = "open") -> float:
    """keep_iou's default for a loop: the table's in open loop, 0 (off) in closed loop, where a kept box is
    the tracker's own one-frame-on guess and the gate only holds the loop back (chosen on the validation
    suite: CSRT closed loop 68.85 vs 64.91 refined AUC without / with it, README)."""
    return 0.0 if loop == "closed" else float(BY_NAME["keep_iou"].default)
DEFAULTS: Dict[str, Any] = {p.name: p.default for p in PARAMS if p.default is not None}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def validate(name: str, value: Any) -> str:
    """Why ``value`` is not acceptable for parameter ``name``; ``""`` when it is."""
    spec = BY_NAME.get(name)
    if spec is None:
        return ""  # not ours (e.g. qos_overrides.*, use_sim_time)
    if name == "cameras":
        names = list(value or [])
        bad = [n for n in names if not isinstance(n, str) or not _NAME.match(n)]
        if bad:
            return f"cameras must be names like 'front' or 'cam_1' (letters, digits, _), got {bad}"
        if len(set(names)) != len(names):
            return f"cameras must be unique, got {names}"
        return ""
    kind = type(spec.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return f"{name} must be {kind.__name__}, got {type(value).__name__}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {list(spec.choices)}, got {value!r}"
    if spec.low is not None and value < spec.low:
        return f"{name} must be >= {spec.low}, got {value}"
    if spec.high is not None and value > spec.high:
        return f"{name} must be <= {spec.high}, got {value}"
    if name == "device" and not _DEVICE.match(value):
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    if name == "search_factor" and 0.0 < value <= 1.0:
        return "search_factor must be 0 (model default) or > 1"
    return ""
