"""One evaluation worker: how it is specified (refiner keyword arguments, device, threads), how it builds its
:class:`~ar_ros.engine.refiner.Refiner` and how it runs one task.

Every worker holds its own refiner, built once and warmed up (its one-target CPU graph ready before the
first sequence, so a sequence's boxes never depend on how soon a background build finished). A task's own
error is reported as its result and never stops the worker; a refiner that cannot be built is a
:class:`WorkerError`, which stops the run (no task could run).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import ArRosError
from .tasks import Task

log = logging.getLogger(__name__)


class WorkerError(ArRosError, RuntimeError):
    """A worker could not even build its refiner (bad checkpoint, device): no task can run."""


@dataclasses.dataclass
class WorkerSpec:
    """How to build one worker's refiner: the Refiner's keyword arguments, its device and threads."""

    model: Dict[str, Any]
    device: str = "cpu"
    threads: int = 1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_specs(model: Dict[str, Any], workers: int, threads: int = 0, spread_gpus: bool = True
                 ) -> List[WorkerSpec]:
    """One spec per worker: with ``spread_gpus``, CUDA workers spread over this machine's visible GPUs
    (Ray assigns GPUs itself); ``threads`` each (0: this machine's cores split evenly, at least one)."""
    device = str(model.get("device") or "cpu")
    gpus = 0
    if spread_gpus and device in ("auto", "cuda"):
        import torch
        gpus = torch.cuda.device_count()
        device = "cuda" if gpus else "cpu"
    per_worker = threads or max(1, usable_cores() // workers)
    if threads and threads * workers > usable_cores():
        log.warning("%d workers x %d threads on %d cores: they will compete", workers, threads, usable_cores())
    return [WorkerSpec(model, f"cuda:{i % gpus}" if device == "cuda" else device, per_worker)
            for i in range(workers)]


def build_refiner(spec: WorkerSpec):
    """The worker's refiner, threads set and warmed up (see the module docstring)."""
    import cv2
    import torch
    from ..engine.refiner import Refiner
    torch.set_num_threads(spec.threads)
    cv2.setNumThreads(spec.threads)
    refiner = Refiner(**{**spec.model, "device": spec.device})
    refiner.warm_up()  # one-target graphs built before the first sequence
    return refiner


def build_or_reason(spec: WorkerSpec) -> Tuple[Any, str]:
    """(refiner, "") or (None, why it could not be built), for a worker to send to the driver."""
    try:
        return build_refiner(spec), ""
    except Exception as err:  # noqa: BLE001 - sent to the driver, which stops the run with it
        return None, f"worker on {spec.device} could not build its refiner: {type(err).__name__}: {err}"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB): a worker's, when called in one."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(task: Task, refiner, progress: Optional[Callable[[int], None]] = None) -> Tuple[str, Any]:
    """("done", record) or ("failed", reason): a task's own error never stops a worker."""
    try:
        record = task.run(refiner, progress)
        record["box_mode"] = refiner.resolved_box_mode()
        record["peak_rss_mb"] = peak_rss_mb()
        return "done", record
    except Exception as err:  # noqa: BLE001 - reported per sequence, the others go on
        log.debug("%s failed:\n%s", task.name, traceback.format_exc())
        return "failed", " ".join(f"{type(err).__name__}: {err}".split())  # one line, however the error is laid out
