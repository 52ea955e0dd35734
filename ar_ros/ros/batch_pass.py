"""One forward pass over every camera's newest frame: check the frames, plan each camera's targets, cap the
pass at ``max_targets`` (round-robin across cameras), refine them all in one batched call, file the results
in each camera's session and publish per camera.

The node owns the worker thread and the locks and hands each pass its jobs; this class keeps what lives
between passes (the round-robin start) and what the passes measure (batch sizes and pass times, read by the
node's diagnostics). A camera whose frame, plan or refinement fails costs only that camera its frame.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, ContextManager, Dict, List, Sequence, Tuple

from ..io.detections import stamp_to_ns
from .camera import Camera
from .diagnostics import Meter
from .pairing import Job

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.refiner import Refiner  # torch: imported on configure, not at node import


class BatchPass:
    """Runs the node's passes; ``failed(cameras, error)`` counts and logs a camera's lost frame."""

    def __init__(self, failed: Callable[[List[Camera], Exception], None]) -> None:
        self._failed = failed
        self.batch_meter = Meter()      # size of each forward pass
        self.pass_meter = Meter()       # ms per forward pass (all cameras)
        self._rr = 0                    # round-robin start when a pass is over max_targets

    def run(self, refiner: "Refiner", lock: ContextManager, jobs: Sequence[Tuple[Camera, Job]],
            max_targets: int) -> None:
        """Plan every camera's frame, refine all targets in one pass, publish per camera. Planning, refining
        and filing results hold ``lock`` (the node's refiner lock); decoding and publishing do not."""
        from ..engine.refiner import check_frame  # torch is imported on configure, not at node import
        ready = []
        for cam, job in jobs:
            frame = job.image.frame()
            try:
                if frame is None:
                    raise ValueError(job.image.error)
                check_frame(frame)  # checked on arrival from the header; this is the decoded frame
            except ValueError as err:
                cam.counters.inc("bad_images")
                cam.warn("bad_image", f"skipping frame: {err}")
                continue
            ready.append((cam, job, frame))
        if not ready:
            return
        with_mask = any(cam.wants_mask() for cam, _, _ in ready)
        t0 = time.perf_counter()
        with lock:
            plans = []
            for cam, job, frame in ready:
                try:
                    assert cam.session is not None  # set with the refiner, dropped on cleanup after the worker stops
                    inputs, dets = cam.inputs(job)
                    step = cam.session.plan(frame, inputs, _stamp(job), color=job.image.color)
                except Exception as err:
                    self._failed([cam], err)
                    continue
                plans.append((cam, job, frame, dets, step))
            allowed = self._cap_batch([p[4] for p in plans], max_targets)
            batch = [(frame, {k: step.bases[k] for k in keep}, job.image.color)
                     for (cam, job, frame, dets, step), keep in zip(plans, allowed)]
            try:
                outputs = refiner.refine_many(batch, mask=with_mask)
            except Exception:
                if len(batch) < 2:
                    raise
                # the joint pass failed: each camera alone, so a failing one costs only its own frame
                outputs = [self._refine_alone(refiner, plan[0], plan[4], item, with_mask)
                           for plan, item in zip(plans, batch)]
            for (cam, job, frame, dets, step), keep, out in zip(plans, allowed, outputs):
                for key, base in step.bases.items():
                    if key not in out:  # over the pass's max_targets: this frame keeps the base box
                        out[key] = _batch_full(base)
                        cam.counters.inc("batch_full")
                assert cam.session is not None  # planned above
                cam.session.finish(step, out)
        pass_ms = (time.perf_counter() - t0) * 1e3
        self.pass_meter.add(pass_ms)
        self.batch_meter.add(float(sum(len(k) for k in allowed)))
        for cam, job, frame, dets, step in plans:
            for tid, kind, text in step.skipped:
                cam.counters.inc(kind)
                cam.warn(kind, text)
            if any(t.startswith("#") for t in step.results):
                cam.warn("no_id", "detections without an id: each is refined against a template from its own "
                                  "frame (set Detection2D.id to track across frames)")
            cam.publish(job.image, step.results, dets, pass_ms, with_mask and cam.wants_mask())

    def _refine_alone(self, refiner: "Refiner", cam: Camera, step, item, with_mask: bool) -> Dict:
        """One camera's part of a pass; when it fails, its base boxes are kept, flagged, and it is counted."""
        try:
            return refiner.refine_many([item], mask=with_mask)[0]
        except Exception as err:
            self._failed([cam], err)
            return {key: _passed_through(base, f"refinement failed: {err}") for key, base in step.bases.items()}

    def _cap_batch(self, steps: List, limit: int) -> List[List]:
        """Keys to refine per camera, at most ``limit`` in total, taken round-robin across cameras."""
        queues = [list(s.bases) for s in steps]
        if sum(len(q) for q in queues) <= limit:
            return queues
        chosen: List[List] = [[] for _ in steps]
        order = [(self._rr + i) % len(steps) for i in range(len(steps))]
        self._rr = (self._rr + 1) % max(len(steps), 1)
        taken = 0
        while taken < limit and any(queues):
            for i in order:
                if queues[i] and taken < limit:
                    chosen[i].append(queues[i].pop(0))
                    taken += 1
        return chosen


def _stamp(job: Job) -> int:
    return stamp_to_ns(job.image.msg.header.stamp)


def _batch_full(base):
    return _passed_through(base, "more targets than max_targets across cameras in this pass; base box kept")


def _passed_through(base, reason: str):
    from ..engine.refiner import passed_through  # torch is imported on configure, not at node import
    return passed_through(base, reason)
