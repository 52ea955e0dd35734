"""Readers for the common tracking dataset folder layouts. Frames load lazily, one at a time.

* ``otb``: ``<root>/<Seq>/groundtruth_rect.txt`` and ``<root>/<Seq>/img/0001.jpg`` ...
* ``lasot``: ``<root>/<class>/<class>-<n>/groundtruth.txt``, ``img/00000001.jpg``, optional
  ``full_occlusion.txt`` / ``out_of_view.txt`` (flags mark absent frames)
* ``got10k``: ``<root>/<Seq>/groundtruth.txt`` and frames ``00000001.jpg`` in the same folder, optional
  ``absence.label``; test splits give only the first GT row
* ``trackingnet``: ``<root>/anno/<Seq>.txt`` and ``<root>/frames/<Seq>/0.jpg`` ... (one TRAIN_k/TEST chunk)

GT rows of absent frames become all zeros (LaSOT's convention, understood by ``metrics``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from .metrics import read_boxes

DATASETS = ("otb", "lasot", "got10k", "trackingnet")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """A dataset folder that does not have the expected layout."""


@dataclass
class SequenceInfo:
    """One sequence: its name, frame files in order, and GT boxes (rows of zeros where absent)."""

    name: str
    frames: List[Path]
    gt: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` as HxWx3 uint8 RGB."""
        path = self.frames[index]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"cannot read image {path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def images(self) -> Iterator[np.ndarray]:
        for i in range(len(self.frames)):
            yield self.image(i)


def _numeric_key(path: Path) -> Tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _frames_in(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise DatasetError(f"missing frame folder {folder}")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES), key=_numeric_key)
    if not files:
        raise DatasetError(f"no images in {folder}")
    return files


def _flags(path: Path, n: int) -> np.ndarray:
    if not path.is_file():
        return np.zeros(n, bool)
    values = [int(v) for v in re.split(r"[,\s]+", path.read_text().strip()) if v != ""]
    out = np.zeros(n, bool)
    out[: min(n, len(values))] = np.array(values[:n], bool)
    return out


def _finish(name: str, frames: List[Path], gt: np.ndarray, absent: Optional[np.ndarray] = None) -> SequenceInfo:
    if len(gt) == 0:
        raise DatasetError(f"{name}: empty ground truth")
    if len(gt) > len(frames):
        raise DatasetError(f"{name}: {len(gt)} GT rows but only {len(frames)} frames")
    if len(gt) < len(frames) and len(gt) != 1:
        raise DatasetError(f"{name}: {len(gt)} GT rows for {len(frames)} frames")
    gt = gt.copy()
    if absent is not None and len(gt) == len(frames):
        gt[absent[: len(gt)]] = 0.0
    return SequenceInfo(name, frames, gt)


def _otb(root: Path) -> List[SequenceInfo]:
    out = []
    for seq in sorted(p for p in root.iterdir() if p.is_dir()):
        gts = sorted(seq.glob("groundtruth_rect*.txt"))
        if not gts:
            continue
        frames = _frames_in(seq / "img")
        gt = read_boxes(gts[0])
        out.append(_finish(seq.name, frames[: len(gt)], gt))
    return out


def _lasot(root: Path) -> List[SequenceInfo]:
    out = []
    for gt_file in sorted(root.glob("*/*/groundtruth.txt")) or sorted(root.glob("*/groundtruth.txt")):
        seq = gt_file.parent
        frames = _frames_in(seq / "img")
        gt = read_boxes(gt_file)
        absent = _flags(seq / "full_occlusion.txt", len(gt)) | _flags(seq / "out_of_view.txt", len(gt))
        out.append(_finish(seq.name, frames, gt, absent))
    return out


def _got10k(root: Path) -> List[SequenceInfo]:
    out = []
    for gt_file in sorted(root.glob("*/groundtruth.txt")):
        seq = gt_file.parent
        frames = _frames_in(seq)
        gt = read_boxes(gt_file)
        absent = _flags(seq / "absence.label", len(gt))
        out.append(_finish(seq.name, frames, gt, absent))
    return out


def _trackingnet(root: Path) -> List[SequenceInfo]:
    out = []
    anno = root / "anno"
    if not anno.is_dir():
        raise DatasetError(f"{root}: no anno/ folder (TrackingNet chunk layout: anno/ and frames/)")
    for gt_file in sorted(anno.glob("*.txt")):
        frames = _frames_in(root / "frames" / gt_file.stem)
        out.append(_finish(gt_file.stem, frames, read_boxes(gt_file)))
    return out


_READERS = {"otb": _otb, "lasot": _lasot, "got10k": _got10k, "trackingnet": _trackingnet}


def open_dataset(kind: str, root: Union[str, Path], names: Optional[List[str]] = None) -> List[SequenceInfo]:
    """All sequences of a dataset folder (optionally only ``names``)."""
    if kind not in _READERS:
        raise DatasetError(f"unknown dataset {kind!r}; choose from {DATASETS}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    seqs = _READERS[kind](root)
    if names:
        wanted = set(names)
        seqs = [s for s in seqs if s.name in wanted]
        missing = wanted - {s.name for s in seqs}
        if missing:
            raise DatasetError(f"{root}: no sequence(s) {sorted(missing)}")
    if not seqs:
        raise DatasetError(f"{root}: no {kind} sequences found")
    return seqs
