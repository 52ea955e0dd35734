#!/usr/bin/env python3
"""Which instructions ONNX Runtime's int8 search graph spends its time in on this CPU (VNNI or not).

Exports the model, quantises the box-only search graph as ``ar-refine export onnx --int8`` does, refines
one target in a loop under ``perf record -e cpu-clock`` and sorts the samples that land in ONNX Runtime's
library by the instructions around them: AVX-512 / AVX VNNI (``vpdpbusd``), the pre-VNNI int8 sequence
(``vpmaddubsw``), fp32 FMA, spin waits of its thread pool, other. Needs ``perf`` and ``objdump``.

    python benchmarks/int8_isa.py [--model PATH] [--threads 2] [--refines 300]
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KINDS = (("VNNI (vpdpbusd)", r"vpdpbusd"), ("pre-VNNI int8 (vpmaddubsw)", r"vpmaddubsw"),
         ("spin wait (pause / tpause)", r"\bt?pause\b"), ("fp32 FMA", r"vfmadd"))


def worker(model_dir: str, threads: int, refines: int) -> None:
    import numpy as np
    import torch
    from ar_ros import Refiner
    torch.set_num_threads(threads)
    refiner = Refiner(model_dir, backend="onnxruntime-int8")
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    refiner.set_target(frame, (200, 150, 70, 90))
    for _ in range(refines):
        refiner.refine(frame, {"0": (204, 152, 70, 90)})


def kind_of(library: str, address: int) -> str:
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={address - 48}",
                          f"--stop-address={address + 48}", library], capture_output=True, text=True).stdout
    return next((name for name, pattern in KINDS if re.search(pattern, dis)), "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refines", type=int, default=300)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.threads, args.refines)
    for tool in ("perf", "objdump"):
        if not shutil.which(tool):
            sys.exit(f"int8_isa: needs '{tool}' on PATH")
    import onnxruntime
    from ar_ros.backends.onnx_export import export_onnx, quantize_int8
    from ar_ros.train.int8_frames import calibration_batches
    from ar_ros.backends.torch_cpu.cpu import cpu_features
    from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
    from ar_ros.model import load_network
    work = Path(tempfile.mkdtemp(prefix="ar_ros_int8_isa_"))
    net, _ = load_network(args.model or DEFAULT_CHECKPOINT)
    model_dir = export_onnx(net, work / "onnx")
    quantize_int8(model_dir, calibration_batches(model_dir))
    data = work / "perf.data"
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", str(data), "--", sys.executable,
                    __file__, "--worker", str(model_dir), "--threads", str(args.threads),
                    "--refines", str(args.refines)], check=True)
    library = next(Path(onnxruntime.__file__).parent.glob("capi/onnxruntime_pybind11_state*.so"))
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--dsos", library.name, "--sort", "sym",
                             "-F", "sample,sym"], capture_output=True, text=True, check=True).stdout
    counts: collections.Counter = collections.Counter()
    for line in report.splitlines():
        hit = re.match(r"\s*(\d+)\s+\[\.\]\s+0x([0-9a-f]+)", line)  # stripped library: addresses, no names
        if hit:
            counts[kind_of(str(library), int(hit.group(2), 16))] += int(hit.group(1))
    total = sum(counts.values())
    print(f"CPU: {cpu_features()}")
    print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, {total} samples in {library.name}")
    for name, n in counts.most_common():
        print(f"  {name:28s} {100 * n / max(total, 1):5.1f}%")


if __name__ == "__main__":
    main()
