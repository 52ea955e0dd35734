#!/usr/bin/env python3
"""Latency of Refiner.refine per frame: 1, 4, 8 targets, box-only and box+mask, CPU (and CUDA if present).

On CPU: fp32, bf16 (where the CPU has bf16 units) and the ONNX Runtime int8 graph (box only), interleaved
with an authors'-style pipeline on the same weights (one target per forward pass, float64 normalisation
per pixel, no channels_last, BatchNorm not folded) as the baseline; prints the CPU features seen, ratios,
and how far bf16 boxes are from fp32 ones on a synthetic sequence. All configurations are called
round-robin, so slow drift of a shared machine hits every configuration alike and the ratios stay
meaningful even when the absolute figures move.

    python benchmarks/bench_refiner.py [--model authors|default|PATH] [--threads 2] [--repeat 20] [--no-int8] [--json]
"""
from __future__ import annotations

import argparse
import json
import tempfile

import cv2
import numpy as np
import torch

from ar_ros import Refiner
from ar_ros.engine import crop as cropping
from ar_ros.backends.onnx_export import export_onnx, quantize_int8
from ar_ros.train.int8_frames import calibration_batches
from ar_ros.backends.torch_cpu.cpu import bf16_problem, cpu_features
from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.eval.timing import interleaved, warm_up_all  # noqa: F401  (interleaved: also imported from here by the other benchmarks)
from ar_ros.data.synthetic import Sequence
from ar_ros.model import AUTHORS_CONFIG, AlphaRefineNet, load_network


def frame_and_boxes(n):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    boxes = {f"t{i}": (40.0 + 60 * (i % 8), 60.0 + 40 * (i // 8), 70.0, 90.0) for i in range(n)}
    return frame, boxes


def authors_style(net, frame, box, kernel):
    """One target: their crop (copyMakeBorder + resize), float64 normalisation, plain NCHW fp32 forward."""
    win = cropping.window_for(box, 2.0, net.config.input_size, "exact")
    patch = cropping.crop(frame, win)
    img = (patch / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(img.astype(np.float32).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        out = net.search(x, kernel)
    return win.box_to_frame(out["boxes"][0].numpy())


def cpu_refiners(checkpoint, int8: bool, random_weights: bool = False) -> dict:
    """fp32, bf16 (on CPUs with bf16 units) and ONNX Runtime int8 (box only) refiners of the same weights.

    With random weights the int8 graph cannot agree with fp32 (its gate is skipped: timed, not trusted).
    """
    refiners = {"cpu/fp32": Refiner(checkpoint)}
    problem = bf16_problem(torch.device("cpu"))
    if problem:
        print(f"bf16 not timed: {problem}")
    else:
        refiners["cpu/bf16"] = Refiner(checkpoint, precision="bf16")
    if int8:
        net = checkpoint if isinstance(checkpoint, AlphaRefineNet) else load_network(checkpoint or DEFAULT_CHECKPOINT)[0]
        onnx_dir = export_onnx(net, tempfile.mkdtemp(prefix="ar_ros_onnx_"))
        try:
            iou = quantize_int8(onnx_dir, calibration_batches(onnx_dir), min_iou=0.0 if random_weights else 0.95)
            print(f"int8 boxes agree with fp32 to mean IoU {iou:.3f} on the calibration crops"
                  + (" (random weights: gate skipped, timed only)" if random_weights else ""))
            refiners["cpu/int8"] = Refiner(str(onnx_dir), backend="onnxruntime-int8")
        except Exception as err:  # reported, the others still run
            print(f"int8 not timed: {err}")
    return refiners


def bf16_box_difference(fp32: Refiner, bf16: Refiner, frames: int = 30) -> tuple:
    """Max and mean |bf16 - fp32| per box coordinate (px) over a synthetic sequence, one target."""
    seq = list(Sequence(100_000, frames, (640, 480)))
    for r in (fp32, bf16):
        r.set_target(seq[0].image, seq[0].box, target_id="acc")
    diffs = [np.abs(np.subtract(fp32.refine(f.image, {"acc": f.box})["acc"].box,
                                bf16.refine(f.image, {"acc": f.box})["acc"].box)) for f in seq[1:]]
    for r in (fp32, bf16):
        r.clear("acc")
    return float(np.max(diffs)), float(np.mean(diffs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="authors", help="authors (AR34 layout, random weights) | default | PATH")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-int8", action="store_true", help="skip the ONNX Runtime int8 graph (export + calibration)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(0)
    if args.model == "authors":
        net = AlphaRefineNet(AUTHORS_CONFIG).eval()
        checkpoint = net
    else:
        checkpoint = None if args.model == "default" else args.model
    frame, boxes = frame_and_boxes(8)
    groups = [cpu_refiners(checkpoint, int8=not args.no_int8, random_weights=args.model == "authors")]  # interleaved together with the baseline
    if torch.cuda.is_available():
        groups += [{"cuda/fp16": Refiner(checkpoint, device="cuda", precision="fp16")},
                   {"cuda/fp16-graphs": Refiner(checkpoint, device="cuda", precision="fp16", cuda_graphs=True)}]
    results = {}
    for group in groups:
        fns = {}
        for prefix, refiner in group.items():
            refiner.set_targets(frame, boxes)
            for mask in (False, True):
                if mask and prefix.endswith("int8"):
                    continue  # the int8 graph is box-only; masks use the fp32 graph
                for n in (1, 4, 8):
                    subset = dict(list(boxes.items())[:n])
                    fns[f"{prefix}/{'box+mask' if mask else 'box'}/{n}"] = \
                        (lambda r=refiner, s=subset, m=mask: r.refine(frame, s, mask=m))
        if "cpu/fp32" in group:  # the in-run baseline: the same weights, unfolded, authors'-style pipeline
            base_net = checkpoint if isinstance(checkpoint, AlphaRefineNet) else load_network(
                checkpoint or DEFAULT_CHECKPOINT)[0]
            base_net = base_net.float().eval().to(memory_format=torch.contiguous_format)
            win = cropping.window_for(boxes["t0"], 2.0, base_net.config.input_size, "exact")
            with torch.no_grad():
                patch = cropping.crop(frame, win).astype(np.float64) / 255.0
                x = torch.from_numpy(((patch - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
                                     .astype(np.float32).transpose(2, 0, 1).copy())[None]
                kernel = base_net.template(x)
            for n in (1, 8):
                fns[f"baseline/cpu/fp32/box/{n}"] = (lambda k=n: [authors_style(base_net, frame, b, kernel)
                                                                 for b in list(boxes.values())[:k]])
        warm_up_all(group.values(), (1, 8))  # the CPU graphs are timed, not their building
        for name, (med, p95) in interleaved(fns, args.repeat).items():  # refine() syncs (.cpu() of outputs)
            results[name] = {"median_ms": med, "p95_ms": p95}
    cpu = groups[0]
    if args.json:
        print(json.dumps({k: round(v["median_ms"], 3) for k, v in results.items()}))
        return
    print(f"model: {args.model}  threads: {args.threads}  torch {torch.__version__}")
    print(f"CPU: {cpu_features()}")
    print(f"{'configuration':32s} {'median ms':>10s} {'p95 ms':>10s}")
    for k, v in results.items():
        print(f"{k:32s} {v['median_ms']:10.2f} {v['p95_ms']:10.2f}")
    b1 = results["baseline/cpu/fp32/box/1"]["median_ms"]
    b8 = results["baseline/cpu/fp32/box/8"]["median_ms"]
    print()
    for prefix in cpu:
        o1 = results[f"{prefix}/box/1"]["median_ms"]
        o8 = results[f"{prefix}/box/8"]["median_ms"]
        print(f"ratio {prefix}/baseline, 1 target: {o1 / b1:.2f}x   8 targets: {o8 / b8:.2f}x   "
              f"{prefix} 8 vs 1 target: {o8 / o1:.2f}x")
    if "cpu/bf16" in cpu:
        t32, t16 = (results[f"cpu/{p}/box/1"]["median_ms"] for p in ("fp32", "bf16"))
        worst, mean = bf16_box_difference(cpu["cpu/fp32"], cpu["cpu/bf16"])
        weights = "random weights: says nothing about trained ones" if args.model == "authors" else "these weights"
        print(f"bf16 vs fp32, 1 target: {t16 / t32:.2f}x the time; boxes differ by max {worst:.3f} px, mean "
              f"{mean:.3f} px per coordinate over 29 synthetic frames ({weights})")


if __name__ == "__main__":
    main()
