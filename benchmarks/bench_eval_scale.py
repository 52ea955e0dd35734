#!/usr/bin/env python3
"""Evaluation at scale: 1 vs 2 worker processes, Ray local vs worker processes, per-worker memory, and a
worker's refinements/s against plain evaluation of the same sequences.

Writes a synthetic dataset in the LaSOT layout (``--sequences`` sequences of ``--frames`` .. 2x that
many frames, with a jittered-GT tracker's result files) and, alternating ``--rounds`` times, refines it
with the shipped model:

* ``plain``: this process, one refiner, the engine's own loop (``benchmark.refine_sequence`` over the
  same lazily read frames and result rows), nothing written: what evaluation costs without the
  scale machinery;
* ``workers 1`` / ``workers 2``: :func:`ar_ros.eval.scale.evaluate` as ``ar-refine eval --dataset ...
  --base-results ... --out`` runs it (threads split over the cores: ``--threads 0``), end to end
  (worker start-up, warm-up, writing every sequence's files and the report included);
* ``ray 2``: the same with ``--ray`` (a local Ray started and stopped each round) and 2 actors.

Throughput is refinements per wall-clock second; "per worker" is refinements per second of a worker's
own time on its sequences (start-up and the report left out), the figure to hold against ``plain``. The
ratios are of medians. Peak memory is each run's largest worker peak RSS (for ``workers 1``, the
process's own).

    python benchmarks/bench_eval_scale.py [--sequences 20] [--frames 30] [--rounds 3] [--threads 0] [--no-ray]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List


def plain(tasks, threads: int) -> float:
    """Refinements per second of one refiner refining every sequence in this process."""
    from ar_ros.eval.benchmark import refine_sequence
    from ar_ros.eval.worker import WorkerSpec, build_refiner, usable_cores
    from ar_ros.eval.tasks import LazyFrames
    refiner = build_refiner(WorkerSpec({}, "cpu", threads or usable_cores()))
    t0 = time.perf_counter()
    n = 0
    for task in tasks:
        rows = [tuple(r) for r in task.base_rows]
        refine_sequence(refiner, LazyFrames(task.info), rows)
        n += len(rows)
    return n / (time.perf_counter() - t0)


def scaled(tasks, out: Path, workers: int, threads: int, use_ray: bool = False) -> Dict[str, float]:
    from ar_ros.eval.scale import evaluate
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    outcome = evaluate(tasks, {}, {"dataset": "bench"}, out=out, workers=workers, threads=threads, use_ray=use_ray,
                       progress=False, log_workers=False)
    wall = time.perf_counter() - t0
    if outcome.failed:
        raise RuntimeError(f"failed sequences: {outcome.failed}")
    timing = outcome.data["timing"]
    return {"rate": timing["refinements"] / wall, "wall": wall, "worker_s": timing["worker_s"],
            "worker_rate": timing["refinements"] / timing["worker_s"] / workers, "peak_mb": timing["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=20)
    ap.add_argument("--frames", type=int, default=30, help="shortest sequence; lengths go up to twice this")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="threads per worker (and for plain); 0: the cores "
                                                           "split among the workers, as the CLI does")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from ar_ros.eval.worker import usable_cores
    from ar_ros.eval.sample_dataset import write_dataset
    from ar_ros.eval.tasks import plan_dataset
    work = Path(tempfile.mkdtemp(prefix="bench_eval_scale_"))
    try:
        lengths = [args.frames + (args.frames * i) // max(args.sequences - 1, 1) for i in range(args.sequences)]
        write_dataset(work / "data", "lasot", lengths, tuple(args.size), results=work / "results")
        tasks, failed = plan_dataset(f"lasot:{work / 'data'}", str(work / "results"))
        assert not failed, failed
        runs: Dict[str, List[Dict[str, float]]] = {k: [] for k in ("plain", "workers 1", "workers 2", "ray 2")}
        for _ in range(args.rounds):
            runs["plain"].append({"rate": plain(tasks, args.threads)})
            runs["workers 1"].append(scaled(tasks, work / "out", 1, args.threads))
            runs["workers 2"].append(scaled(tasks, work / "out", 2, args.threads))
            if not args.no_ray:
                runs["ray 2"].append(scaled(tasks, work / "out", 2, args.threads, use_ray=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items() if rs}
    ratios = {"workers 2 / workers 1": med["workers 2"]["rate"] / med["workers 1"]["rate"],
              "workers 1 / plain": med["workers 1"]["rate"] / med["plain"]["rate"],
              "one worker's own rate / plain": med["workers 1"]["worker_rate"] / med["plain"]["rate"]}
    if "ray 2" in med:
        ratios["ray 2 / workers 2"] = med["ray 2"]["rate"] / med["workers 2"]["rate"]
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or
            platform.machine(), "cores": usable_cores(), "sequences": args.sequences, "frames": sum(lengths),
            "size": list(args.size), "rounds": args.rounds, "medians": med, "ratios": ratios}
    if args.json:
        print(json.dumps(info))
        return
    print(f"{info['date']}, {info['cores']} cores; {args.sequences} sequences, {sum(lengths)} frames "
          f"{args.size[0]}x{args.size[1]}, medians of {args.rounds} rounds")
    for name, m in med.items():
        extra = "" if "wall" not in m else \
            f"  wall {m['wall']:6.1f} s  worker time {m['worker_s']:6.1f} s  per worker {m['worker_rate']:6.1f}/s" \
            f"  peak/worker {m['peak_mb']:5.0f} MB"
        print(f"{name:10s} {m['rate']:7.1f} refinements/s{extra}")
    for name, value in ratios.items():
        print(f"{name:30s} {value:.2f}x")


if __name__ == "__main__":
    main()
