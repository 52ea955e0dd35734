"""Run evaluation tasks on this process, on N worker processes, or as Ray tasks on a cluster.

Every worker holds its own refiner (see :mod:`.worker`). The driver hands out tasks longest first, one
at a time per worker, and gets back each task's record or the reason it failed. A worker that dies
(killed, out of memory) costs only the task it held, which is given to a fresh worker once more.

Worker processes are started with ``spawn`` (a forked torch is unsafe), ignore SIGINT (the driver
decides when to stop) and run ``threads`` torch / OpenCV threads each, so N workers fill the cores
without oversubscribing them. With CUDA, worker ``i`` runs on ``cuda:i mod k`` of the k visible GPUs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import signal
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import ArRosError
from .tasks import Record, Task
from .worker import WorkerError, WorkerSpec, build_or_reason, build_refiner, run_one

log = logging.getLogger(__name__)

#: how often a task that killed its worker is tried again, on a fresh worker
RETRIES = 1
#: an event from a backend: ("frames", slot, n) | ("done", slot, record) | ("failed", slot, reason)
#: | ("died", slot, reason)
Event = Tuple[str, int, Any]


class RayMissing(ArRosError, RuntimeError):
    """``--ray`` without Ray installed."""


# ---------------------------------------------------------------------------------------- backends
class InlineBackend:
    """One worker: this process (no pickling, no start-up; a crash here ends the run)."""

    slots = 1

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec, self._refiner = spec, None
        self._task: Optional[Task] = None
        self.on_frames: Callable[[int], None] = lambda n: None  # the scheduler's frame counter

    def submit(self, slot: int, task: Task) -> None:
        self._task = task

    def events(self, timeout: float) -> Iterator[Event]:
        if self._task is None:
            return iter(())
        task, self._task = self._task, None
        if self._refiner is None:
            self._refiner = build_refiner(self.spec)
        status, value = run_one(task, self._refiner, self.on_frames)
        return iter([(status, 0, value)])

    def restart(self, slot: int) -> None:
        pass

    def close(self) -> None:
        if self._refiner is not None:
            self._refiner.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to set
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_main(slot: int, spec: WorkerSpec, tasks, events) -> None:
    """A worker process: build the refiner, then run tasks until ``None`` comes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops the run, then us (in case it was not inherited)
    refiner, problem = build_or_reason(spec)
    if refiner is None:
        events.put(("fatal", slot, problem))
        return
    events.put(("ready", slot, None))
    last = [time.monotonic(), 0]

    def frames(n: int) -> None:  # batched: a queue message per frame would cost more than the frame
        last[1] += n
        if time.monotonic() - last[0] > 0.5:
            events.put(("frames", slot, last[1]))
            last[0], last[1] = time.monotonic(), 0

    while True:
        task = tasks.get()
        if task is None:
            break
        status, value = run_one(task, refiner, frames)
        if last[1]:
            events.put(("frames", slot, last[1]))
            last[1] = 0
        events.put((status, slot, value))
    refiner.close()


class ProcessBackend:
    """N spawned worker processes, each with its own task queue (so a dead one is known by its task)."""

    def __init__(self, specs: List[WorkerSpec], context: str = "spawn") -> None:
        import multiprocessing
        self._mp: Any = multiprocessing.get_context(context)
        self.specs = specs
        self.slots = len(specs)
        self._events = self._mp.Queue()
        self._procs: List[Any] = [None] * self.slots
        self._queues: List[Any] = [None] * self.slots
        self._busy: List[bool] = [False] * self.slots
        self._ready: List[bool] = [False] * self.slots
        for slot in range(self.slots):
            self._start(slot)

    def _start(self, slot: int) -> None:
        self._queues[slot] = self._mp.Queue()
        self._ready[slot] = False
        proc = self._mp.Process(target=_worker_main, args=(slot, self.specs[slot], self._queues[slot], self._events),
                                name=f"ar-refine-worker-{slot}", daemon=True)
        with _sigint_ignored():  # inherited through exec: a Ctrl-C never hits a worker, even while it starts
            proc.start()
        self._procs[slot] = proc
        log.info("worker %d: started (pid %d, %s, threads %d)", slot, proc.pid, self.specs[slot].device,
                 self.specs[slot].threads)

    def submit(self, slot: int, task: Task) -> None:
        self._busy[slot] = True
        self._queues[slot].put(task)

    def events(self, timeout: float) -> Iterator[Event]:
        # which workers are dead is looked at before the queue is drained: whatever one sent before it
        # died is then read first, so a sequence it finished is never taken for lost
        dead = [slot for slot, proc in enumerate(self._procs) if proc is not None and not proc.is_alive()]
        messages = []
        try:
            messages.append(self._events.get(timeout=0.0 if dead else timeout))
            while True:
                messages.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for kind, slot, value in messages:
            if kind == "fatal":
                raise WorkerError(value)
            if kind == "ready":
                self._ready[slot] = True
                continue
            if kind in ("done", "failed"):
                self._busy[slot] = False
            yield kind, slot, value
        for slot in dead:
            code = self._procs[slot].exitcode
            self._procs[slot] = None
            if not self._ready[slot]:  # it never got to a sequence: the next one would die the same way
                raise WorkerError(f"worker {slot} exited with code {code} while starting (its error is above); "
                                  "nothing was run")
            if self._busy[slot]:
                self._busy[slot] = False
                yield "died", slot, f"worker died (exit code {code})"
            else:
                log.warning("worker %d: died while idle (exit code %s); starting another", slot, code)
                self._start(slot)

    def restart(self, slot: int) -> None:
        self._start(slot)

    def close(self) -> None:
        for slot, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                if self._busy[slot]:
                    proc.terminate()  # stopping: its unfinished sequence is not kept anyway
                else:
                    self._queues[slot].put(None)
        for proc in self._procs:
            if proc is not None:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()


def _ray():
    try:
        import ray
    except ImportError:
        raise RayMissing("--ray needs Ray: pip install 'ar_ros[ray]' (or pip install ray)") from None
    return ray


class RayWorker:
    """A Ray actor holding one refiner (built at its first task); ``run`` is the per-sequence task."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec, self.refiner = spec, None

    def run(self, task: Task) -> Tuple[str, Any]:
        if self.refiner is None:
            self.refiner, problem = build_or_reason(self.spec)
            if self.refiner is None:
                return "fatal", problem
        return run_one(task, self.refiner)


class RayBackend:
    """N Ray actors (one refiner each) on a local or existing cluster; GPUs requested per actor on CUDA."""

    def __init__(self, specs: List[WorkerSpec], address: Optional[str] = None) -> None:
        ray = self._ray = _ray()
        self._owns = not ray.is_initialized()  # a Ray this run started is shut down at its end
        if self._owns:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=sum(s.threads for s in specs), include_dashboard=False, log_to_driver=False)
        self.specs, self.slots = specs, len(specs)
        self._actors: List[Any] = [None] * self.slots
        self._refs: Dict[Any, int] = {}
        for slot in range(self.slots):
            self._start(slot)

    def _start(self, slot: int) -> None:
        spec = self.specs[slot]
        gpu = spec.device.startswith("cuda")
        # Ray assigns the GPU: the actor sees only it, as cuda:0
        actor_spec = dataclasses.replace(spec, device="cuda" if gpu else spec.device)
        cls = self._ray.remote(num_cpus=spec.threads, num_gpus=1 if gpu else 0)(RayWorker)
        self._actors[slot] = cls.remote(actor_spec)
        log.info("worker %d: Ray actor (%s, %d threads)", slot, spec.device, spec.threads)

    def submit(self, slot: int, task: Task) -> None:
        self._refs[self._actors[slot].run.remote(task)] = slot

    def events(self, timeout: float) -> Iterator[Event]:
        if not self._refs:
            time.sleep(timeout)
            return
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        for ref in ready:
            slot = self._refs.pop(ref)
            try:
                status, value = self._ray.get(ref)
            except self._ray.exceptions.RayError as err:  # the actor died (killed, out of memory)
                yield "died", slot, f"Ray worker died ({type(err).__name__})"
                continue
            if status == "fatal":
                raise WorkerError(value)
            yield status, slot, value

    def restart(self, slot: int) -> None:
        self._start(slot)

    def close(self) -> None:
        for actor in self._actors:
            if actor is not None:
                self._ray.kill(actor)
        if self._owns:
            self._ray.shutdown()


# --------------------------------------------------------------------------------------- scheduler
@dataclasses.dataclass
class Callbacks:
    """What the driver hears: a task finished or failed for good, frames processed."""

    done: Callable[[Task, Record, int], None]
    failed: Callable[[Task, str], None]
    frames: Callable[[int], None] = lambda n: None
    started: Callable[[Task, int], None] = lambda task, slot: None


def make_backend(specs: List[WorkerSpec], ray: Optional[str] = None, use_ray: bool = False):
    """Inline for one local worker, spawned processes for several, Ray actors with ``use_ray``."""
    if use_ray:
        return RayBackend(specs, ray)
    if len(specs) == 1:
        return InlineBackend(specs[0])
    return ProcessBackend(specs)


def run_tasks(tasks: List[Task], backend, callbacks: Callbacks, poll: float = 0.2) -> None:
    """Run ``tasks`` longest first on ``backend``'s workers until all are done or failed.

    A task whose worker died is run once more on a fresh worker (:data:`RETRIES`); after that it fails
    with the reason. Raises whatever interrupts it (KeyboardInterrupt), after nothing else is started.
    """
    pending = sorted(tasks, key=lambda t: -t.frames)
    tries: Dict[str, int] = {}
    running: Dict[int, Task] = {}
    if isinstance(backend, InlineBackend):
        backend.on_frames = callbacks.frames
    while pending or running:
        for slot in range(backend.slots):
            if slot not in running and pending:
                task = pending.pop(0)
                running[slot] = task
                callbacks.started(task, slot)
                backend.submit(slot, task)
        for kind, slot, value in backend.events(poll):
            if kind == "frames":
                callbacks.frames(value)
                continue
            task = running.pop(slot)
            if kind == "done":
                callbacks.done(task, value, slot)
            elif kind == "failed":
                callbacks.failed(task, value)
            else:  # died
                tries[task.name] = tries.get(task.name, 0) + 1
                log.warning("worker %d: %s while on %s%s", slot, value, task.name,
                            "; trying it again on a new worker" if tries[task.name] <= RETRIES else "")
                backend.restart(slot)
                if tries[task.name] <= RETRIES:
                    pending.insert(0, task)
                else:
                    callbacks.failed(task, f"{value}, twice")
