"""Thin argument parsing over library functions. Each subcommand lives in one small function."""
from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ar-refine", description="Alpha-Refine box refinement (ar_ros)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="describe a checkpoint (default: the shipped model)")
    p.add_argument("checkpoint", nargs="?", help="checkpoint path")
    p.set_defaults(func=_cmd_info)
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
