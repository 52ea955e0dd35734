"""The bf16 gate: should these weights run in bf16 on this CPU (``precision: bf16``)? Measured, printed.

bf16 is accepted only if its refined boxes agree with fp32 by the int8 graph's gate (mean IoU over every
frame of a synthetic suite, :func:`agreement`) and it is clearly faster (median refine time, one target,
box only, timed round-robin with fp32). ``auto`` never picks bf16 by itself: the user sets it after this
check says yes, so nothing outside the options decides which code runs.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from ..backends.torch_cpu.cpu import cpu_bf16_units, cpu_name
from ..engine.refiner import DEFAULT_CHECKPOINT, Refiner
from ..model import AlphaRefineNet, load_network
from .benchmark import AGREEMENT_MIN_IOU, agreement
from ..data.synthetic import Sequence
from .timing import interleaved, warm_up_all

MIN_IOU = AGREEMENT_MIN_IOU  # the int8 graph's gate (``ar-refine export onnx --int8``)
MAX_TIME_RATIO = 0.9         # bf16 must take at most this share of fp32's time: noise must not make it "faster"


def check_bf16(checkpoint: Union[None, str, os.PathLike, AlphaRefineNet], sequences: Iterable[Sequence],
               min_iou: float = MIN_IOU, max_time_ratio: float = MAX_TIME_RATIO, repeat: int = 20,
               suite_name: str = "custom") -> dict:
    """Measure bf16 against fp32 for these weights and return the verdict.

    Raises ``ValueError`` on a CPU without bf16 units (bf16 cannot be run, so nothing is recorded).
    """
    net = checkpoint if isinstance(checkpoint, AlphaRefineNet) else load_network(
        Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)[0]
    fp32 = Refiner(net, precision="fp32")
    bf16 = Refiner(net, precision="bf16")  # refused here where the CPU has no bf16 units
    sequences = list(sequences)
    iou = agreement(fp32, bf16, sequences)
    first = sequences[0][0]  # speed on a real crop: one target, box only, as a node refines most often
    for r in (fp32, bf16):
        r.set_target(first.image, first.box)
    fns = {name: (lambda r=r: r.refine(first.image, {"0": first.box})) for name, r in (("fp32", fp32), ("bf16", bf16))}
    warm_up_all((fp32, bf16))  # each as it refines: with its CPU graphs
    times = interleaved(fns, repeat)
    ratio = times["bf16"][0] / times["fp32"][0]
    accepted = iou >= min_iou and ratio <= max_time_ratio
    threads = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
    reason = (f"boxes agree with fp32 to mean IoU {iou:.4f} (gate >= {min_iou}) on the '{suite_name}' suite, "
              f"bf16 takes {ratio:.2f}x fp32's time (gate <= {max_time_ratio}; {times['bf16'][0]:.1f} vs "
              f"{times['fp32'][0]:.1f} ms at {threads})")
    verdict = {"bf16": bool(accepted), "mean_iou": round(iou, 5), "time_ratio": round(ratio, 3),
               "bf16_ms": round(times["bf16"][0], 3), "fp32_ms": round(times["fp32"][0], 3),
               "threads": torch.get_num_threads(), "suite": suite_name, "units": cpu_bf16_units(),
               "cpu": cpu_name(), "date": datetime.date.today().isoformat(), "reason": reason}
    return verdict


def describe(verdict: dict) -> str:
    """One line for the command line."""
    word = "bf16 accepted (set precision bf16)" if verdict["bf16"] else "bf16 rejected (keep fp32)"
    return f"{word}: {verdict['reason']}"


def main_check(checkpoint: Optional[str], suite_name: str) -> int:
    """``ar-refine check-bf16``: 0 when bf16 was accepted, 1 when rejected."""
    from ..data.synthetic import suite
    verdict = check_bf16(checkpoint, suite(suite_name), suite_name=suite_name)
    print(describe(verdict))
    return 0 if verdict["bf16"] else 1
