"""One progress bar for every long loop (replay, bag writing, live replay, training).

``progress_bar(...)`` is a tqdm bar (frames or iterations, rate, ETA) on a terminal, or a silent
stand-in with the same methods when disabled, so callers never test for ``None``.
"""
from __future__ import annotations

from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str = "frame", enabled: bool = True, **kwargs: Any):
    """A bar with ``update(n)``, ``set_postfix(...)`` and ``close()``; also a context manager."""
    if not enabled:
        return _Silent()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)
