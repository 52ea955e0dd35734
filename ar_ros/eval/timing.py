"""Timing several configurations fairly on a shared machine: round-robin, medians (benchmarks and gates)."""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Mapping, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.refiner import Refiner


def warm_up_all(refiners: Iterable[Refiner], batch_sizes: Iterable[int] = (1,)) -> None:
    """Build what each refiner's backend builds per shape (CPU / CUDA graphs) for these batch sizes, for the
    searches its box mode runs (box + mask only in ``fused`` mode, which runs the mask branch for boxes too;
    box and box + mask otherwise), so that a benchmark times the graphs and not their building. A box-only
    graph of a fused refiner would never run and only costs build time and memory (its own weights)."""
    sizes = list(batch_sizes)
    for refiner in refiners:
        for with_mask in (True,) if refiner.resolved_box_mode() == "fused" else (False, True):
            refiner.runner.warm_up(sizes, with_mask)


def interleaved(fns: Mapping[str, Callable[[], object]], repeat: int, warmup: int = 2,
                block: int = 1) -> Dict[str, Tuple[float, float]]:
    """Median and p95 ms of each named function, called round-robin so that machine drift hits all alike.

    With ``block`` > 1, each visit makes one untimed call and then ``block`` timed ones: a backend whose
    threads keep spinning after a call (ONNX Runtime) then cannot slow down the next one's timing.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, list] = {name: [] for name in names}
    rounds = max(1, -(-repeat // block))
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            if block > 1:
                fns[name]()
            for _ in range(block):
                t0 = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: (statistics.median(t), float(np.percentile(t, 95))) for name, t in times.items()}
