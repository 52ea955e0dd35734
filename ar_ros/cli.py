"""Thin argument parsing over library functions. Each subcommand lives in one small function."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    from .model import load_checkpoint
    from .engine.refiner import DEFAULT_CHECKPOINT
    path = args.checkpoint or DEFAULT_CHECKPOINT
    state, config, meta = load_checkpoint(path)
    print(f"checkpoint: {path}")
    print(f"config:     {config.to_dict()}")
    print(f"meta:       {meta}")
    print(f"tensors:    {len(state)}  values: {sum(v.numel() for v in state.values())}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from .eval import metrics
    for path in (args.gt, args.pred):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
    result = metrics.score(metrics.read_boxes(args.pred), metrics.read_boxes(args.gt))
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"AUC {result.auc * 100:.2f}  precision@20px {result.precision * 100:.2f}  "
              f"norm.precision@0.2 {result.norm_precision * 100:.2f}  AO {result.ao * 100:.2f}  "
              f"SR50 {result.sr50 * 100:.2f}  SR75 {result.sr75 * 100:.2f}  "
              f"({result.frames} frames, {result.absent_frames} absent)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ar-refine", description="Alpha-Refine box refinement (ar_ros)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="describe a checkpoint (default: the shipped model)")
    p.add_argument("checkpoint", nargs="?", help="checkpoint path")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("score", help="OPE scores of one sequence from two x,y,w,h text files")
    p.add_argument("gt", help="ground truth boxes (x,y,w,h per line)")
    p.add_argument("pred", help="predicted boxes (same number of lines)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_score)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(0)
    from .model import CheckpointError
    try:
        sys.exit(args.func(args))
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"ar-refine {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
