"""Argument helpers shared by the commands: checked numbers and folders, the model options (from the one
options table) and the Refiner they make."""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional


#: model.heads.MASK_HEADS' names (no torch import for --help; test_cli checks they match)
MASK_HEAD_CHOICES = ("authors", "slim", "slim4")

EXIT_SKIPPED = 77  # automake's 'skipped': eval --suite real when the real data was not fetched

def _writable_folder(path: str, what: str) -> None:
    """Fail before any work when ``path`` cannot become a folder the command writes into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} is a file; it must be a folder (it is created when missing)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot create the folder ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: the folder is not writable")

def _bounded(kind: type, low: float, what: str):
    """An argparse type: ``kind`` values >= ``low``; argparse names the flag in its one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= low:  # NaN included
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse's 'invalid <name> value' wording
    return parse

_non_negative_int = _bounded(int, 0, "a whole number >= 0 (0 = the default)")

_positive_int = _bounded(int, 1, "a whole number >= 1")

_non_negative_float = _bounded(float, 0.0, "a number >= 0")

def _model_options(p: argparse.ArgumentParser) -> None:
    """The model options of every command that refines: names, defaults, checks and help from the one options
    table (ar_ros/options.py), so the CLI, the Python API and the node take the same values."""
    from ..options import BY_NAME, CLOSED_LOOP_GATES, add_flags
    p.add_argument("--checkpoint", default=None, help="model file, or a folder from `export onnx` for the "
                                                      "onnxruntime / tensorrt backends (default: the shipped model)")
    add_flags(p, ["device", "backend", "precision"])
    p.add_argument("--threads", type=_non_negative_int, default=0, help=BY_NAME["threads"].description)
    add_flags(p, ["box_mode"])
    spec = BY_NAME["keep_iou"]
    p.add_argument("--keep-iou", type=float, default=None,
                   help=f"{spec.description} Default: {spec.default:g}, or "
                        f"{CLOSED_LOOP_GATES['keep_iou']:g} (off) with --loop closed.")

def _scale_options(p: argparse.ArgumentParser) -> None:
    """Where many sequences run: worker processes on this machine, or Ray tasks."""
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own refiner; sequences go longest first; with --device "
                        "cuda spread over the visible GPUs; --threads 0 splits the cores among them (default: 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the sequences as Ray tasks on --workers actors: a local Ray when no ADDRESS, or the "
                        "cluster at ADDRESS (e.g. ray://head:10001 or auto); pip install 'ar_ros[ray]'")

def _model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The model options by the names the Refiner and the node's parameters share (the keep gates, keep_iou
    and a quality head's quality_margin: the default of the command's --loop where not given)."""
    from ..options import loop_gates
    if args.checkpoint and os.path.isdir(args.checkpoint) and args.backend == "torch":
        raise ValueError(f"{args.checkpoint} is a folder (from `export onnx`?): pass --backend onnxruntime, "
                         "onnxruntime-int8 or tensorrt, or --checkpoint a model file")
    return {"checkpoint": args.checkpoint, "device": args.device, "backend": args.backend,
            "precision": args.precision, "box_mode": args.box_mode,
            **loop_gates(getattr(args, "loop", "open"), _given_gates(args))}

def _given_gates(args: argparse.Namespace) -> Dict[str, Optional[float]]:
    """The keep gates as the command line gave them (None: not given, or a command without the flag)."""
    from ..options import CLOSED_LOOP_GATES
    return {name: getattr(args, name, None) for name in CLOSED_LOOP_GATES}

def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)  # ONNX Runtime takes torch's thread count

def _refiner(args: argparse.Namespace, **kwargs: Any):
    """A Refiner from the model options (_model_options) plus any other keyword argument."""
    from ..engine.refiner import Refiner
    _set_threads(args)
    return Refiner(**_model_kwargs(args), **kwargs)


#: commands that start a ROS 2 program and hand it every argument, as `ros2 run ar_ros <executable>` would
ROS_PROGRAMS = {
    "node": ("ar_ros.ros.node", "the refiner node (several cameras: -p \"cameras:=[front,left]\")"),
    "base-tracker": ("ar_ros.ros.base_tracker", "the bundled OpenCV base tracker node (-p tracker:=csrt|kcf|mil)"),
}
