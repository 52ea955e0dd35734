#!/usr/bin/env python3
"""All available backends x precisions x batch sizes in one run, with the plain-torch baseline.

CPU here: torch fp32, torch bf16 where the CPU has bf16 units, ONNX Runtime fp32 and int8; the CPU
features seen are printed. On a CUDA machine torch fp16 (eager and CUDA graphs), ONNX Runtime's CUDA
provider (when installed) and TensorRT fp16 engines (when the tensorrt package is) are added, with
TensorRT's ratio to torch fp16. torch/fp32 runs the CPU graphs (backends/torch_cpu/graphs.py, built before timing),
torch/fp32-eager the same network without them. Every refiner runs the default box_mode ("auto":
"fused" for a model with the slim mask decoder, e.g. the shipped one, "corner" otherwise; printed);
torch/fp32-fused or torch/fp32-corner is the other mode.
Box-only and box+mask, 1/4/8 targets, median and p95 of Refiner.refine per frame, and ratios against
plain fp32 torch (the authors' way: NCHW, no channels_last, BatchNorm not folded) measured in the same
run. All configurations are called round-robin in blocks (one untimed call, then four timed; see
ar_ros.eval.timing.interleaved), so machine drift hits them alike and one backend's spinning threads do
not spill into the next one's timing.

    python benchmarks/bench_backends.py [--model PATH] [--threads 2] [--repeat 20] [--json] [--plot out.png]
        [--vs OTHER]   # OTHER's torch/fp32 and onnxruntime/int8 in the same run, prefixed 'vs:'
        [--vs-onnx DIR]  # the int8 graphs of an existing export folder (any ar_ros version), 'vs-onnx:'
        [--only PATTERN ...]  # time only the configurations matching these shell patterns, e.g.
                              # --only '*int8/box/1' '*torch/fp32/box/1' (fewer configurations, less drift)
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import tempfile
from pathlib import Path

import torch

from ar_ros import Refiner
from ar_ros.backends.onnx_export import export_onnx, quantize_int8
from ar_ros.train.int8_frames import calibration_batches
from ar_ros.engine.masks import resolve_box_mode
from ar_ros.backends.torch_cpu.cpu import bf16_problem, cpu_features
from ar_ros.model import load_network
from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.eval.timing import warm_up_all
from bench_refiner import frame_and_boxes, interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", nargs="+", default=None, metavar="PATTERN",
                    help="time only these configurations (shell patterns over the printed names, e.g. '*int8/box/1')")
    ap.add_argument("--plot", default=None, help="also draw the medians (p95 as whiskers) into this PNG")
    ap.add_argument("--vs", default=None, help="a second checkpoint: its torch/fp32 and onnxruntime/int8 are timed "
                                               "in the same run (e.g. a candidate default against the shipped one)")
    ap.add_argument("--vs-onnx", default=None, help="an `export onnx --int8` folder of a second model, made by any "
                                                    "ar_ros version (e.g. the default of an earlier release, "
                                                    "as exported then): its int8 graphs timed as they are")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or DEFAULT_CHECKPOINT
    onnx_dir = tempfile.mkdtemp(prefix="ar_ros_onnx_")
    net, _ = load_network(path)
    export_onnx(net, onnx_dir)
    try:
        quantize_int8(onnx_dir, calibration_batches(onnx_dir))
        int8 = True
    except Exception as err:  # reported, the others still run
        print(f"int8: {err}")
        int8 = False
    default_mode = resolve_box_mode("auto", net.config.mask_head)
    other = "corner" if default_mode == "fused" else "fused"
    configs = {
        "torch-plain/fp32": lambda: Refiner(path, channels_last=False, fold_batchnorm=False),
        "torch/fp32": lambda: Refiner(path),
        "torch/fp32-eager": lambda: Refiner(path, cpu_graphs=False),
        f"torch/fp32-{other}": lambda: Refiner(path, box_mode=other),
        "onnxruntime/fp32": lambda: Refiner(onnx_dir, backend="onnxruntime"),
    }
    bf16 = bf16_problem(torch.device("cpu"))
    if bf16:
        print(f"bf16 not timed: {bf16}")
    else:
        configs["torch/bf16"] = lambda: Refiner(path, precision="bf16")
    if int8:
        configs["onnxruntime/int8"] = lambda: Refiner(onnx_dir, backend="onnxruntime-int8")
    if torch.cuda.is_available():
        configs["torch/fp16-cuda"] = lambda: Refiner(path, device="cuda", precision="fp16")
        configs["torch/fp16-cuda-graphs"] = lambda: Refiner(path, device="cuda", precision="fp16", cuda_graphs=True)
        import onnxruntime
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            configs["onnxruntime/fp32-cuda"] = lambda: Refiner(onnx_dir, device="cuda", backend="onnxruntime")
        try:
            from ar_ros.backends.tensorrt import build_engines
            build_engines(onnx_dir)
            configs["tensorrt/fp16"] = lambda: Refiner(onnx_dir, device="cuda", backend="tensorrt")
        except Exception as err:  # no tensorrt package, or the build failed: reported, the others still run
            print(f"tensorrt: {err}")
    if args.vs:
        vs_dir = tempfile.mkdtemp(prefix="ar_ros_onnx_vs_")
        export_onnx(load_network(args.vs)[0], vs_dir)
        quantize_int8(vs_dir, calibration_batches(vs_dir))
        configs["vs:torch/fp32"] = lambda: Refiner(args.vs)
        configs["vs:torch/fp32-eager"] = lambda: Refiner(args.vs, cpu_graphs=False)
        configs["vs:onnxruntime/int8"] = lambda: Refiner(vs_dir, backend="onnxruntime-int8")
    if args.vs_onnx:
        configs["vs-onnx:onnxruntime/int8"] = lambda: Refiner(args.vs_onnx, backend="onnxruntime-int8")
    frame, boxes = frame_and_boxes(8)
    fns, refiners = {}, []
    for name, make in configs.items():
        cases = [(f"{name}/{'box+mask' if mask else 'box'}/{n}", mask, n) for mask in (False, True)
                 for n in (1, 4, 8) if not (mask and name.endswith(("-fused", "-corner")))]  # other box_mode: box
        cases = [c for c in cases if args.only is None or any(fnmatch.fnmatchcase(c[0], p) for p in args.only)]
        if not cases:
            continue
        refiner = make()
        refiners.append(refiner)
        refiner.set_targets(frame, boxes)
        for key, mask, n in cases:
            subset = dict(list(boxes.items())[:n])
            fns[key] = (lambda r=refiner, s=subset, m=mask: r.refine(frame, s, mask=m))
    if not fns:
        raise SystemExit(f"--only {' '.join(args.only)}: no configuration matches")
    warm_up_all(refiners, (1, 4, 8))  # the CPU graphs are timed, not their building
    results = interleaved(fns, args.repeat, block=4)
    if args.plot:
        plot(results, args.plot, f"{Path(path).name}, {args.threads} threads, torch {torch.__version__}")
    if args.json:
        print(json.dumps({k: round(v[0], 3) for k, v in results.items()}))
        return
    vs_mode = f" (box_mode auto: {resolve_box_mode('auto', load_network(args.vs)[0].config.mask_head)})" \
        if args.vs else ""
    print(f"model: {path} (box_mode auto: {default_mode})  threads: {args.threads}  torch {torch.__version__}" +
          (f"  vs: {args.vs}{vs_mode}" if args.vs else "") + (f"  vs-onnx: {args.vs_onnx}" if args.vs_onnx else ""))
    print(f"CPU: {cpu_features()}")
    print(f"{'configuration':36s} {'median ms':>10s} {'p95 ms':>9s} {'vs plain':>9s}")
    for key, (med, p95) in results.items():
        name, kind, n = key.rsplit("/", 2)
        base = results.get(f"torch-plain/fp32/{kind}/{n}", (float("nan"),))[0]
        ratio = f"{med / base:8.2f}x" if base == base else f"{'-':>9s}"  # NaN: plain torch not timed (--only)
        print(f"{key:36s} {med:10.2f} {p95:9.2f} {ratio}")
    for key, (med, _) in results.items():  # --vs: the second model against this one, same configuration
        other = key.split(":", 1)[1] if key.startswith(("vs:", "vs-onnx:")) else ""
        if other in results:
            print(f"{key}: {med / results[other][0]:.2f}x the time of {other}")
    for kind in ("box", "box+mask"):  # the other model as it ran before CPU graphs (eager) against this one now
        for n in (1, 4, 8):
            key = f"vs:torch/fp32-eager/{kind}/{n}"
            if key in results:
                print(f"{key}: {results[key][0] / results[f'torch/fp32/{kind}/{n}'][0]:.2f}x the time of "
                      f"torch/fp32/{kind}/{n}")
    for key, (med, _) in results.items():  # GPU only: the TensorRT vs torch fp16 comparison
        if key.startswith("tensorrt/fp16/"):
            torch_fp16 = results[key.replace("tensorrt/fp16/", "torch/fp16-cuda/")][0]
            print(f"{key}: {torch_fp16 / med:.2f}x faster than torch/fp16-cuda")


def plot(results, out, title: str) -> None:
    """Rows box / box+mask, columns 1/4/8 targets: a bar per backend, median ms with p95 whiskers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    split = {k: k.rsplit("/", 2) for k in results}
    names = list(dict.fromkeys(name for name, _, _ in split.values()))
    kinds = list(dict.fromkeys(kind for _, kind, _ in split.values()))
    counts = sorted({n for _, _, n in split.values()}, key=int)
    fig, axes = plt.subplots(len(kinds), len(counts), figsize=(3.4 * len(counts), 0.45 * len(names) * len(kinds) + 1.2),
                             squeeze=False, sharey=True)
    for r, kind in enumerate(kinds):
        for c, n in enumerate(counts):
            ax = axes[r][c]
            med, p95 = zip(*(results.get(f"{name}/{kind}/{n}", (float("nan"),) * 2) for name in names))
            ax.barh(range(len(names)), med, xerr=[[0] * len(med), [b - a for a, b in zip(med, p95)]],
                    color="tab:blue", ecolor="grey", capsize=3)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            for i, m in enumerate(med):
                if m != m:  # NaN: this backend has no such configuration (the other box_mode: box only)
                    ax.text(0, i, " n/a", va="center", fontsize=7, color="grey")
            ax.set_title(f"{kind}, {n} target{'s' if n != '1' else ''}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            if r == len(kinds) - 1:
                ax.set_xlabel("ms per refine (median, p95)", fontsize=8)
    axes[0][0].invert_yaxis()  # the y axis is shared: first backend on top everywhere
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
