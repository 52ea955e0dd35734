"""Which image each detections message belongs to: the node's synchronisation policy, without ROS.

One :class:`Pairing` per camera takes images and detections (by stamp, with the time they arrived) and returns
the (image, detections) jobs to refine and the seconds until its next wait runs out. It holds no lock and
starts no thread: the node calls it under its own lock and owns the worker that calls :meth:`Pairing.pair`
again by the deadline. Counters and warnings come back as :class:`Event` items for the caller to record.

A detection names its frame by stamp: the exact image, waited for up to ``sync_wait`` when it has not
arrived yet, only then the nearest unused image within ``sync_slop``; detections older than the newest
image by more than ``max_image_age`` with no image are stale. Of several matches in one call the newest
frame wins. In track mode the newest frame with no detections goes out alone (previous boxes) once
detections have been silent for ``detections_timeout``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, List, Optional, Protocol, Tuple, TypeVar

from .stamp_cache import StampCache

MAX_WAITING = 10  # detection messages held while their image has not arrived


class Frame(Protocol):
    """What pairing needs of a cached image: when it arrived, and whether it was handed out already."""

    received: float
    paired: bool


F = TypeVar("F", bound=Frame)


@dataclass(frozen=True)
class Settings:
    """The live parameters pairing reads, snapshot once per call (seconds, stamps in ns)."""

    sync_wait: float = 0.1
    sync_slop_ns: int = 50_000_000
    max_image_age_ns: int = 1_000_000_000
    track: bool = False
    detections_timeout: float = 0.5


@dataclass(frozen=True)
class Event:
    """A counter to increment and, with ``warning``, a throttled warning under that key."""

    counter: str
    warning: str = ""
    text: str = ""


@dataclass
class Job(Generic[F]):
    """One synchronised (image, detections) pair for the refiner; ``detections`` None: previous boxes."""

    image: F
    detections: Any
    received: float


@dataclass
class Outcome(Generic[F]):
    jobs: List[Job[F]]
    due: Optional[float]          # seconds until the next wait runs out; None: nothing waits
    events: List[Event]


class Pairing(Generic[F]):
    """Pairs one camera's detections with its images (see the module docstring)."""

    def __init__(self, cache: StampCache[F]) -> None:
        self.cache = cache
        self.waiting: List[Tuple[int, Any, float]] = []   # (stamp, detections, arrival)
        self.unpaired: Optional[F] = None                 # track mode: newest frame waiting for detections
        self.last_detections = -math.inf                  # when detections last arrived

    def reset(self) -> None:
        """Forget what waits (the node deactivates)."""
        self.waiting.clear()
        self.unpaired = None

    def image(self, stamp: int, frame: F, settings: Settings) -> Outcome[F]:
        """A new image (already in the cache under ``stamp``)."""
        if settings.track:
            if frame.received - self.last_detections >= settings.detections_timeout:
                # no base tracker, or it went silent (stopped, died): refine from the previous boxes
                frame.paired = True
                return Outcome([Job(frame, None, frame.received)], None, [Event("no_detections")])
            self.unpaired = frame
        return self.pair(frame.received, settings)

    def detections(self, stamp: int, msg: Any, now: float, settings: Settings) -> Outcome[F]:
        """A new detections message stamped ``stamp`` that arrived at ``now``."""
        self.last_detections = now
        self.waiting.append((stamp, msg, now))
        events = []
        if len(self.waiting) > MAX_WAITING:  # a base tracker without images must not grow memory
            self.waiting.pop(0)
            events.append(Event("unsynced"))
        out = self.pair(now, settings)
        out.events[:0] = events
        return out

    def pair(self, now: float, settings: Settings) -> Outcome[F]:
        """Match what waits with the cached images; the jobs to run now and the next deadline."""
        latest = self.cache.latest()  # by arrival: a future-stamped frame does not make the others stale
        due: List[float] = []
        events: List[Event] = []
        keep: List[Tuple[int, Any, float]] = []
        found: Optional[Job[F]] = None
        for stamp, msg, arrived in self.waiting:
            hit, outcome = self.cache.get(stamp), ""
            if hit is not None:
                outcome = "paired_exact" if hit[1].received <= arrived else "paired_waited"
                if settings.track and hit[1].paired:  # that frame already went out with the previous boxes
                    events.append(Event("unmatched", "late", f"dropping detections stamped {stamp / 1e9:.3f}: "
                                        "their frame was already refined without them (detections_timeout)"))
                    continue
            elif now - arrived < settings.sync_wait:  # always waited for: stamps may jump, none says "lost"
                keep.append((stamp, msg, arrived))
                due.append(arrived + settings.sync_wait - now)
                continue
            else:
                hit = self.cache.get(stamp, settings.sync_slop_ns, accept=lambda image: not image.paired)
                if hit is None and latest is not None and latest[0] - stamp > settings.max_image_age_ns:
                    events.append(Event("stale", "stale", f"dropping detections stamped {stamp / 1e9:.3f}: no "
                                        "image with that stamp and older than max_image_age"))
                    continue
                if hit is None:
                    events.append(Event("unmatched", "unmatched", f"dropping detections stamped "
                                        f"{stamp / 1e9:.3f}: no image with that stamp within sync_wait, none "
                                        "unused within sync_slop"))
                    continue
                outcome = "paired_nearest"
            events.append(Event(outcome))
            if found is not None:  # the newest frame wins; an older match is skipped
                events.append(Event("skipped_stale"))
                if found.image.received > hit[1].received:
                    continue
            found = Job(hit[1], msg, arrived)
        self.waiting = keep
        jobs: List[Job[F]] = []
        if found is not None:
            if self.unpaired is not None and self.unpaired.received <= found.image.received:
                self.unpaired = None
            jobs.append(found)
        if settings.track and self.unpaired is not None:
            silent_until = self.last_detections + settings.detections_timeout
            if now >= silent_until:
                events.append(Event("no_detections"))
                jobs.append(Job(self.unpaired, None, now))
                self.unpaired = None
            else:
                due.append(silent_until - now)
        for job in jobs:
            job.image.paired = True  # no later pairing takes it as the nearest
        return Outcome(jobs, min(due, default=None), events)
