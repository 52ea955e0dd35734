"""Tracker result files: one ``x,y,w,h`` row per frame, the format every tracker publishes."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np


def read_boxes(path: Union[str, Path]) -> np.ndarray:
    """Read ``x,y,w,h`` rows separated by commas, tabs or spaces (blank lines and # comments skipped)."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in line.replace(",", " ").replace("\t", " ").split() if p]
        if len(parts) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 numbers x,y,w,h, got {len(parts)}: {line!r}")
        try:
            rows.append([float(v) for v in parts])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not a number in {line!r}") from None
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def write_boxes(path: Union[str, Path], boxes: np.ndarray) -> None:
    """Write ``x,y,w,h`` rows, comma separated (what :func:`read_boxes` and the official toolkits read)."""
    np.savetxt(path, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), fmt="%.4f", delimiter=",")
