"""A bounded, stamp-keyed cache of recent camera frames (our replacement for message_filters)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Optional, Tuple, TypeVar

T = TypeVar("T")


class StampCache(Generic[T]):
    """Keep the last ``capacity`` items received, by stamp (ns). Lookup: exact stamp, else nearest within a slop.

    Order is arrival order, never stamp order: one frame stamped an hour ahead (a clock jump, a bad
    driver) is just the oldest entry 30 frames later, not the "newest" frame for ever.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._items: "OrderedDict[int, T]" = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, stamp_ns: int, item: T) -> None:
        with self._lock:
            self._items[stamp_ns] = item
            self._items.move_to_end(stamp_ns)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evicted += 1

    def get(self, stamp_ns: int, slop_ns: int = 0,
            accept: Optional[Callable[[T], bool]] = None) -> Optional[Tuple[int, T]]:
        """(stamp, item) for the exact stamp, else the nearest within ``slop_ns`` (among the items
        ``accept`` takes, when given), else ``None``."""
        with self._lock:
            if stamp_ns in self._items:
                return stamp_ns, self._items[stamp_ns]
            near = [s for s, item in self._items.items() if abs(s - stamp_ns) <= slop_ns
                    and (accept is None or accept(item))] if slop_ns > 0 else []
            best = min(near, key=lambda s: abs(s - stamp_ns), default=None)
            return None if best is None else (best, self._items[best])

    def latest(self) -> Optional[Tuple[int, T]]:
        """The item received last (whatever its stamp), or ``None``."""
        with self._lock:
            if not self._items:
                return None
            stamp = next(reversed(self._items))
            return stamp, self._items[stamp]

    def span(self) -> Tuple[int, int]:
        """(oldest, newest) stamps held, (0, 0) when empty."""
        with self._lock:
            return (min(self._items), max(self._items)) if self._items else (0, 0)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def resize(self, capacity: int) -> None:
        with self._lock:
            self.capacity = max(1, capacity)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
