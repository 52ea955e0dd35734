"""Rolling rates, latencies and counters, rendered as diagnostic_msgs/DiagnosticStatus."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Deque, Dict, List, Tuple

import numpy as np


class Meter:
    """Event rate over a sliding window (seconds) and percentiles of attached values."""

    def __init__(self, window: float = 5.0, maxlen: int = 2000) -> None:
        self.window = window
        self._events: Deque[Tuple[float, float]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        with self._lock:
            self._events.append((time.monotonic() if now is None else now, value))

    def _recent(self, now: float) -> List[Tuple[float, float]]:
        return [e for e in self._events if now - e[0] <= self.window]

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._recent(now)
        if len(recent) < 2:
            return 0.0
        span = now - recent[0][0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def percentiles(self, qs=(50, 95), now: float | None = None) -> List[float]:
        now = time.monotonic() if now is None else now
        with self._lock:
            vals = [v for _, v in self._recent(now)]
        if not vals:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(vals, qs)]


class Counters:
    """Named monotonically increasing counts."""

    def __init__(self) -> None:
        self._c: Dict[str, int] = {}
        self._lock = threading.Lock()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] = self._c.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._c.get(name, 0)

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._c)


def fmt(value: float, digits: int = 1) -> str:
    return "nan" if value != value else f"{value:.{digits}f}"
