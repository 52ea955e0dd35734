"""Every option of ar_ros in one table: name, default, choices or range, one-line doc, and who takes it.

The :class:`~ar_ros.engine.refiner.Refiner`'s keyword defaults, the node's declared parameters
(``ros/params.py``), ``config/ar_ros.yaml`` (a test keeps it equal) and the CLI's model flags
(:func:`add_flags`) all come from here, so a Python user, a ROS user and a CLI user get the same boxes from
the same model. Choice lists come from the code that implements them. Importable without rclpy or torch.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .backends.names import BACKENDS, PRECISIONS
from .engine.crop import CROP_MODES
from .engine.masks import BOX_MODES, DEFAULT_BOX_MODE
from .engine.quality import LOST_FRAMES, LOST_QUALITY, QUALITY_MARGIN, RESEED_BELOW
from .errors import ArRosError

COLORS = ("rgb", "bgr")


class OptionError(ArRosError, ValueError):
    """An option value that is not acceptable (the message names the option and the problem)."""


@dataclass(frozen=True)
class Spec:
    name: str
    default: Any
    description: str
    read_only: bool = False          # node: changing it needs a lifecycle cleanup + configure
    choices: Tuple[str, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    refiner: bool = False            # a keyword argument of Refiner (same name, same default)
    node: bool = True                # a node parameter

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: Tuple[Spec, ...] = (
    Spec("cameras", None, "Camera names for one node serving several cameras with one model (topics "
         "<cam>/image, <cam>/detections, <cam>/refined/..., services <cam>/set_target ...). Unset = one "
         "camera on image / detections.", read_only=True),
    Spec("checkpoint", "", "Model file: ar_ros checkpoint, the authors' SEcmnet_ep0040-c.pth.tar, or a "
         "state_dict; a folder from `ar-refine export onnx` for the exported backends. Empty = the built-in "
         "default model.", read_only=True, refiner=True),
    Spec("device", "auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N", read_only=True,
         refiner=True),
    Spec("precision", "auto", "auto (fp16 for torch on CUDA, fp32 otherwise) | fp32 | fp16 (CUDA; on CPU to check its numerics) | bf16 (CPUs "
         "with AMX, AVX-512 BF16 or Arm BF16; `ar-refine check-bf16` says whether it pays for your weights).",
         read_only=True, choices=PRECISIONS, refiner=True),
    Spec("backend", "torch", "torch | onnxruntime | onnxruntime-int8 | tensorrt (checkpoint = a folder from "
         "`ar-refine export onnx [--int8]`; tensorrt also needs `ar-refine export tensorrt`).", read_only=True,
         choices=BACKENDS, refiner=True),
    Spec("cuda_graphs", False, "Replay each search pass from a CUDA graph (less launch overhead on a GPU). "
         "torch backend on CUDA only; the node ignores it with a warning elsewhere.", read_only=True,
         refiner=True),
    Spec("cpu_graphs", True, "On CPU (fp32, bf16): compile one oneDNN Graph graph per batch size up to "
         "max_targets at start-up (warm-up), then run those shapes through them (about two fifths less "
         "time per frame for the shipped model). false keeps the packed eager network.", read_only=True,
         refiner=True),
    Spec("crop_mode", "", "Empty = what the model was trained with; 'exact' = the authors' crop "
         "(use with their weights); 'clean' = ours.", read_only=True, choices=("",) + CROP_MODES, refiner=True),
    Spec("search_factor", 0.0, "Search region = factor x box per side. 0 = the model's own (2.0 as in the "
         "paper).", read_only=True, low=0.0, high=10.0, refiner=True),
    Spec("threads", 0, "CPU threads for inference, torch and ONNX Runtime (0 = torch's default).",
         read_only=True, low=0, high=256),
    Spec("max_batch", 32, "Most crops in one forward pass (bounds memory however many targets come in).",
         low=1, high=1024, refiner=True, node=False),
    Spec("image_transport", "raw", "raw: subscribe `image` (sensor_msgs/Image); compressed: subscribe "
         "`image/compressed` (sensor_msgs/CompressedImage, jpeg or png).", read_only=True,
         choices=("raw", "compressed")),
    Spec("mode", "refine", "refine: refine every incoming base box by Detection2D.id. track: targets only "
         "from set_target; detections supply base boxes when they match.", read_only=True,
         choices=("refine", "track")),
    Spec("max_targets", 8, "Most boxes refined per frame (one batch), id-less ones included; the others "
         "come out with their base box, flagged as fallbacks (counted in over_max_targets).", low=1, high=254),
    Spec("min_score", 0.0, "Below this refiner confidence the base box is passed through (fallback).",
         low=0.0, high=1.0, refiner=True),
    Spec("max_scale_change", 3.0, "A refined box whose width or height differs from the base box by more "
         "than this factor is rejected (fallback).", low=1.01, high=100.0, refiner=True),
    Spec("keep_iou", 0.85, "Do no harm, models without a quality head (the authors'): when the refined box "
         "overlaps the base box by more than this IoU, the base box is kept (a box that is already right is not "
         "moved by the model's error). 0 = off; "
         "0.85 was chosen for the shipped network, without its head, on the validation suite "
         "(tools/box_mode_sweep.py). Closed loop evaluation uses 0: there the gate only holds the loop back.",
         low=0.0, high=1.0, refiner=True),
    Spec("quality_margin", QUALITY_MARGIN, "Models with a quality head (the shipped one): the base box is kept "
         "(reason 'base better') when its predicted IoU is at least the refined box's plus this (below 0: also "
         "a base box predicted nearly as good, which the model's own error would only move). Replaces keep_iou "
         "for such models. 1 = off; closed loop evaluation uses 0.05.", low=-1.0, high=1.0, refiner=True),
    Spec("lost_quality", LOST_QUALITY, "Models with a quality head: a frame whose predicted IoU is below this "
         "counts towards 'lost'.", low=0.0, high=1.0, refiner=True),
    Spec("lost_frames", LOST_FRAMES, "Models with a quality head: a target is flagged lost after this many "
         "such frames in a row (reset by set_target).", low=1, high=1000, refiner=True),
    Spec("reseed_below", RESEED_BELOW, "Closed loop (eval, replay, the base_tracker node's feedback), models "
         "with a quality head: a trusted refined box is fed back to the base tracker only when the base box's "
         "predicted IoU is below this (the tracker has drifted); a tracker on its target keeps its own state, "
         "since an OpenCV tracker re-initialises on every re-seed and loses what it learned. 1 = every trusted "
         "box.", low=0.0, high=1.0, refiner=True, node=False),
    Spec("box_mode", DEFAULT_BOX_MODE, "corner: the corner head's box (the paper's). fused: also run the "
         "mask branch and move the box towards the mask's box where the two agree (more precise; costs the "
         "mask branch on every box). auto: fused with the slim mask decoder (the shipped model), corner with "
         "the authors'.", choices=BOX_MODES, refiner=True),
    Spec("publish_mask", True, "Publish refined/mask (computed only while someone subscribes)."),
    Spec("mask_mode", "label", "label: pixel value k = k-th detection; binary: union as 0/255.",
         choices=("label", "binary")),
    Spec("mask_threshold", 0.5, "Probability above which a pixel belongs to a target mask.", low=0.0, high=1.0,
         refiner=True),
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

BY_NAME: Dict[str, Spec] = {p.name: p for p in OPTIONS}
NODE_PARAMS: Tuple[Spec, ...] = tuple(p for p in OPTIONS if p.node)
# what a quality head's decisions take
QUALITY_FLAGS = ("quality_margin", "lost_quality", "lost_frames", "reseed_below")
DEFAULTS: Dict[str, Any] = {p.name: p.default for p in OPTIONS if p.default is not None}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


#: The keep-the-base-box gates (``keep_iou``; ``quality_margin`` for models with a quality head) and their
#: closed-loop defaults, chosen on the validation suite's CSRT closed loop (docs/accuracy.md). There a kept box
#: is the tracker's own guess one frame on and is not fed back: ``keep_iou``'s agreement test keeps boxes the
#: loop should have moved (off: 0), while a quality head that predicts the base box clearly better (by 0.05)
#: spares a right tracker a re-seed.
CLOSED_LOOP_GATES: Dict[str, float] = {"keep_iou": 0.0, "quality_margin": 0.05}


def loop_default(name: str, loop: str = "open") -> float:
    """The default of a keep gate (``keep_iou``, ``quality_margin``) for a loop: the table's in open loop,
    :data:`CLOSED_LOOP_GATES`' in closed loop."""
    return CLOSED_LOOP_GATES[name] if loop == "closed" else float(BY_NAME[name].default)


def loop_gates(loop: str = "open", given: Optional[Mapping[str, Optional[float]]] = None) -> Dict[str, Any]:
    """Both keep gates for a loop: each one ``given`` as it is, the others (absent or None) at
    :func:`loop_default`."""
    given = given or {}
    return {name: loop_default(name, loop) if given.get(name) is None else given[name] for name in CLOSED_LOOP_GATES}


def problem(name: str, value: Any) -> str:
    """Why ``value`` is not acceptable for option ``name``; ``""`` when it is (or when it is not ours)."""
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


def check(**values: Any) -> None:
    """Raise :class:`OptionError` for the first value that :func:`problem` refuses."""
    for name, value in values.items():
        why = problem(name, value)
        if why:
            raise OptionError(why)


def add_flags(parser: argparse.ArgumentParser, names: Sequence[str], **defaults: Any) -> None:
    """Add ``--name`` flags for these options: type, choices, default and help from the table (``defaults``
    overrides a default for one command, e.g. ``keep_iou=None`` = chosen by its ``--loop``)."""
    for name in names:
        spec = BY_NAME[name]
        default = defaults.get(name, spec.default)
        shown = "" if default is None else f" (default: {default if default != '' else 'empty'})"
        if isinstance(spec.default, bool):
            parser.add_argument(spec.flag, default=default, action=argparse.BooleanOptionalAction,
                                help=spec.description)
            continue
        kind = type(spec.default)

        def parse(text: str, name: str = name, kind: type = kind) -> Any:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
            why = problem(name, value)
            if why:
                raise argparse.ArgumentTypeError(why)
            return value

        parser.add_argument(spec.flag, type=parse, default=default, metavar=name.upper(),
                            help=spec.description + shown)
