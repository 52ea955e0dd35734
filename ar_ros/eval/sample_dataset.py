"""Synthetic sequences written as a benchmark dataset folder (LaSOT or GOT-10k layout) with a tracker's
result files beside it: what tests and benchmarks of ``ar-refine eval --dataset`` run on, and a way to
try the whole pipeline with nothing downloaded."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..data.base_trackers import jittered_gt
from ..data.results import write_boxes
from ..data.synthetic import Sequence as SyntheticSequence
from .tasks import sequence_seed

LAYOUTS = ("lasot", "got10k")


def sequence_folder(root: Path, layout: str, index: int) -> Tuple[str, Path, Path]:
    """(name, folder of its groundtruth.txt, folder of its frames) of sequence ``index`` in ``layout``."""
    if layout == "lasot":
        name = f"synth-{index + 1}"
        seq = root / "synth" / name
        return name, seq, seq / "img"
    if layout == "got10k":
        name = f"GOT-10k_Test_{index + 1:06d}"
        return name, root / name, root / name
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def write_dataset(root: Union[str, Path], layout: str = "lasot", lengths: Sequence[int] = (8, 8),
                  size: Tuple[int, int] = (160, 120), results: Union[str, Path, None] = None,
                  first_seed: int = 500_000) -> Dict[str, int]:
    """Write ``len(lengths)`` synthetic sequences (frames as JPEG, GT as x,y,w,h rows) and, with
    ``results``, a jittered-GT tracker's ``<name>.txt`` for each. Returns name -> frame count."""
    root = Path(root)
    out = {}
    for i, length in enumerate(lengths):
        name, seq_dir, img_dir = sequence_folder(root, layout, i)
        img_dir.mkdir(parents=True, exist_ok=True)
        frames = list(SyntheticSequence(first_seed + i, int(length), size))
        for t, frame in enumerate(frames):
            cv2.imwrite(str(img_dir / f"{t + 1:08d}.jpg"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
        gt = np.array([f.box for f in frames], np.float64)
        write_boxes(seq_dir / "groundtruth.txt", gt)
        if results is not None:
            Path(results).mkdir(parents=True, exist_ok=True)
            boxes = jittered_gt([tuple(r) for r in gt], sequence_seed(name))
            write_boxes(Path(results) / f"{name}.txt",
                        np.array([b if b is not None else (np.nan,) * 4 for b in boxes], np.float64))
        out[name] = len(frames)
    return out


def frame_path(root: Union[str, Path], layout: str, index: int, frame: int) -> Optional[Path]:
    """The file of ``frame`` (0-based) of sequence ``index``, e.g. to delete or corrupt it in a test."""
    _, _, img_dir = sequence_folder(Path(root), layout, index)
    return img_dir / f"{frame + 1:08d}.jpg"
