#!/usr/bin/env python3
"""What the quality head adds to a search pass: the same network with and without it, in one run.

    python benchmarks/bench_quality_head.py [--checkpoint C] [--batch 1 4] [--reps 200] [--threads 1]
    python benchmarks/bench_quality_head.py --graphs --threads 2 --reps 500

Both networks hold the same weights (BatchNorm folded, eval mode, fp32 eager torch on the CPU, or the GPU
with ``--device cuda``); the two are timed in alternation, call by call, so that a busy machine slows both
alike. Prints the median milliseconds per ``search`` (box only, and box + the mask logits that
``box_mode: fused`` uses) and the ratio with / without the head. ``--graphs``: instead, the CPU backend the
engine runs at fp32 (packed convolutions, oneDNN graphs built for each batch: ``open_backend``), box and
box + mask (``box_mode: fused``), in the same alternation: the ratio with less noise than two separate runs
of ``bench_backends.py --vs``. The head is as built (untrained): its cost does not depend on its weights.
"""
import argparse
import statistics
import sys
import time
from dataclasses import replace
from typing import Dict, List

import torch

from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.model import AlphaRefineNet
from ar_ros.model.checkpoint import build_network
from ar_ros.model.fuse import fold_batchnorm
from ar_ros.train.quality import quality_network


def timed(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def time_backends(plain: AlphaRefineNet, headed: AlphaRefineNet, args) -> int:
    """``--graphs``: both networks through the CPU fp32 backend, graphs built, timed in alternation."""
    from ar_ros.backends.factory import open_backend
    backends = {name: open_backend(net, device="cpu", precision="fp32")
                for name, net in (("without head", plain), ("with head", headed))}
    print(f"CPU backend fp32 with oneDNN graphs, {args.threads} thread(s), {args.reps} calls each")
    size = plain.config.input_size
    for batch in args.batch:
        images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for kind, with_mask in (("box", False), ("box + mask", True)):
                for backend in backends.values():
                    backend.warm_up([batch], with_mask)
                kernels = {name: b.template(images) for name, b in backends.items()}
                times: Dict[str, List[float]] = {name: [] for name in backends}
                for i in range(10 + args.reps):  # the first 10: warm-up
                    for name, backend in backends.items():
                        t = timed(lambda: backend.search(images, kernels[name], with_mask=with_mask), lambda: None)
                        if i >= 10:
                            times[name].append(t)
                med = {name: statistics.median(v) for name, v in times.items()}
                print(f"batch {batch}, {kind:10}: without head {med['without head']:7.3f} ms, with head "
                      f"{med['with head']:7.3f} ms, ratio {med['with head'] / med['without head']:.3f}")
    for backend in backends.values():
        backend.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--reps", type=int, default=200, help="timed calls per configuration (>= 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--graphs", action="store_true", help="time the CPU backend (packed, oneDNN graphs) instead")
    args = p.parse_args(argv)
    if args.reps < 1 or args.threads < 1 or min(args.batch) < 1:
        p.error("--reps, --threads and every --batch must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # the checkpoint's network with its own head (the shipped model has one) or a new one as built, and the
    # same box and mask weights without a head
    headed = quality_network(args.checkpoint)
    plain = build_network({k: v for k, v in headed.state_dict().items() if not k.startswith("quality_head.")},
                          replace(headed.config, quality_head=False)).eval()
    if args.graphs:
        return time_backends(plain, headed, args)
    nets = {}
    for name, net in (("without head", plain), ("with head", headed)):
        fold_batchnorm(net)
        nets[name] = net.to(device)
    head_params = sum(t.numel() for t in headed.quality_head.parameters())
    print(f"{args.checkpoint}: {plain.config.backbone_title}, {plain.config.input_size} px; quality head "
          f"{head_params} parameters; device {device}, {args.threads} thread(s), {args.reps} calls each")
    size = plain.config.input_size
    for batch in args.batch:
        images = torch.randn(batch, 3, size, size, device=device)
        box_ms = float("nan")
        with torch.inference_mode():
            kernels = plain.template(images)
            for kind, kwargs in (("box", {}), ("box + mask logits", {"with_mask": True, "mask_logits": True})):
                times = {name: [] for name in nets}
                for _ in range(10):  # warm-up
                    for net in nets.values():
                        net.search(images, kernels, **kwargs)
                for _ in range(args.reps):
                    for name, net in nets.items():
                        times[name].append(timed(lambda: net.search(images, kernels, **kwargs), sync))
                med = {name: statistics.median(v) for name, v in times.items()}
                box_ms = box_ms if kwargs else med["without head"]
                print(f"batch {batch}, {kind:18}: without head {med['without head']:7.3f} ms, with head "
                      f"{med['with head']:7.3f} ms, ratio {med['with head'] / med['without head']:.3f}")
            # the head alone on its inputs (less noisy than a difference of two passes on a busy machine)
            inputs = []
            hook = nets["with head"].quality_head.register_forward_pre_hook(lambda _m, a: inputs.append(a))
            nets["with head"].search(images, kernels)
            hook.remove()
            head = nets["with head"].quality_head
            head_ms = statistics.median(timed(lambda: head(*inputs[0]), sync) for _ in range(args.reps))
            print(f"batch {batch}, {'the head alone':18}: {head_ms:7.3f} ms = {head_ms / box_ms * 100:.1f}% of the box "
                  "search without it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
