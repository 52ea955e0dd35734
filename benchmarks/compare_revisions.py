#!/usr/bin/env python3
"""Time this tree against an earlier revision of ar_ros with the same benchmark, in one run.

A worktree of REV is made in a temporary folder; the benchmark (default ``bench_backends.py --json``) runs in
the two trees alternately, ``--rounds`` times each, so that drift on a shared machine hits both alike. Prints
per configuration the median over rounds of each tree's median, their ratio (this tree / REV) and the
ratios' spread. Both trees run with this venv's packages; only ``ar_ros`` differs: the tree goes first on
PYTHONPATH, so a benchmark that starts the installed node (``bench_multi_camera.py``, after ``source
tools/setup_env.sh``) runs each tree's node code, with the colcon install's generated messages (the
package's ``extend_path`` finds them; REV's messages must have the fields its node fills). A benchmark whose
JSON is nested (lists of runs with a ``mode``, per-camera dicts) is compared leaf by leaf, e.g.
``one multi-camera node/refined_fps_total``; figures are in the benchmark's own units.

    python benchmarks/compare_revisions.py f8dd679 --rounds 5 -- --threads 2 --repeat 30 --only 'torch/*'
    python benchmarks/compare_revisions.py f8dd679 --rounds 1 --script bench_multi_camera.py -- --rate 5 --seconds 15
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent


def flatten(value: Any, prefix: str = "") -> Dict[str, float]:
    """The numbers of a benchmark's JSON by path ("mode/key/..."; list items by their ``mode`` or index)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)}
    items = value.items() if isinstance(value, dict) else \
        ((v.get("mode", i) if isinstance(v, dict) else i, v) for i, v in enumerate(value))
    out: Dict[str, float] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
    return out


def run(tree: Path, script: str, args: List[str]) -> Dict[str, float]:
    # the tree first: its ar_ros wins; the rest kept (the colcon install's messages, vision_msgs)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / script), "--json", *args], cwd=tree, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {script} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return flatten(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the earlier revision (commit, tag, branch)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of the benchmark in each tree (default: 3)")
    ap.add_argument("--script", default="bench_backends.py", help="a benchmark of benchmarks/ with --json")
    ap.epilog = "after --: the benchmark's own arguments"
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    opts, args = ap.parse_args(argv[:cut]), argv[cut + 1:]
    with tempfile.TemporaryDirectory(prefix="ar_ros_rev_") as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), opts.rev], check=True,
                       capture_output=True)
        try:
            times: Dict[str, Dict[str, List[float]]] = {"new": {}, "old": {}}
            for r in range(opts.rounds):
                order = [("new", ROOT), ("old", old)] if r % 2 == 0 else [("old", old), ("new", ROOT)]
                for name, tree in order:
                    for key, ms in run(tree, opts.script, args).items():
                        times[name].setdefault(key, []).append(ms)
                print(f"round {r + 1}/{opts.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False,
                           capture_output=True)
    print(f"{'configuration':44s} {'this':>9s} {opts.rev:>12s} {'ratio':>7s} {'ratio range':>15s}")
    for key in sorted(set(times["new"]) & set(times["old"])):
        new, old_ms = times["new"][key], times["old"][key]
        ratios = [a / b for a, b in zip(new, old_ms)]
        print(f"{key:44s} {statistics.median(new):9.2f} {statistics.median(old_ms):12.2f} "
              f"{statistics.median(ratios):7.2f} {min(ratios):7.2f}-{max(ratios):.2f}")
    for key in sorted(set(times["new"]) ^ set(times["old"])):
        print(f"{key:44s} only in {'this tree' if key in times['new'] else opts.rev}")


if __name__ == "__main__":
    main()
