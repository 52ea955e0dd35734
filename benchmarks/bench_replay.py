#!/usr/bin/env python3
"""Offline replay throughput and its overhead over the engine alone, in one run.

Writes a synthetic bag (640x480, jittered-GT base) and, alternating ``--rounds`` times, (a) replays it
with the shipped model into an output bag and (b) runs the same engine calls (RefineSession.step) on
the same frames already decoded in memory. Overhead = (median replay time - median engine time) /
median engine time: everything evaluation adds (reading, decoding, pairing, bookkeeping, writing).
The time spent inside the refiner during the replay is printed too.

    python benchmarks/bench_replay.py [--frames 150] [--rounds 3] [--backend torch|onnxruntime|...] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ar_ros import Refiner
from ar_ros.eval import bags
from ar_ros.data.base_trackers import jittered_gt
from ar_ros.eval.replay import replay
from ar_ros.engine.session import RefineSession
from ar_ros.data.synthetic import Sequence


class TimedRefiner(Refiner):
    """A Refiner that adds up the time spent in refine and set_targets."""

    spent = 0.0

    def refine_many(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super().refine_many(*args, **kwargs)
        finally:
            TimedRefiner.spent += time.perf_counter() - t0

    def set_targets(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return super().set_targets(*args, **kwargs)
        finally:
            TimedRefiner.spent += time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="input and output bags")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="ar_ros_bench_"))
    frames = list(Sequence(100_001, args.frames, (640, 480)))
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp / "in", (f.image for f in frames), jittered_gt(gt, 1), gt, fps=30,
                               storage=args.storage)
    checkpoint = None
    if args.backend != "torch":
        from ar_ros.backends.onnx_export import export_onnx, quantize_int8
        from ar_ros.train.int8_frames import calibration_batches
        from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
        from ar_ros.model import load_network
        checkpoint = str(export_onnx(load_network(DEFAULT_CHECKPOINT)[0], tmp / "onnx"))
        if args.backend.endswith("int8"):
            quantize_int8(checkpoint, calibration_batches(checkpoint))
    refiner = TimedRefiner(checkpoint, backend=args.backend)
    base = jittered_gt(gt, 1)
    images = [f.image for f in frames]

    def engine_only():
        refiner.clear()
        session = RefineSession(refiner, mode="refine")
        t0 = time.perf_counter()
        for i, (image, box) in enumerate(zip(images, base)):
            session.step(image, [("target", box)], i)
        return time.perf_counter() - t0

    engine_only()  # warm-up: first-call allocations are not overhead
    replays, engines, inside = [], [], []
    for r in range(args.rounds):
        refiner.clear()
        shutil.rmtree(tmp / "out", ignore_errors=True)
        TimedRefiner.spent = 0.0
        t0 = time.perf_counter()
        result = replay(bag, refiner, out=tmp / "out", progress=False, storage=args.storage)
        replays.append(time.perf_counter() - t0)
        inside.append(TimedRefiner.spent)
        engines.append(engine_only())
    total, engine = statistics.median(replays), statistics.median(engines)
    out = {"frames": result.refined_frames, "backend": args.backend, "storage": args.storage, "rounds": args.rounds,
           "replay_s": total, "engine_s": engine, "refiner_in_replay_s": statistics.median(inside),
           "fps": result.refined_frames / total, "overhead_pct": (total - engine) / engine * 100}
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:12s} {v:.2f}" if isinstance(v, float) else f"{k:12s} {v}")


if __name__ == "__main__":
    main()
