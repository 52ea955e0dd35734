"""Readers for the common tracking dataset folder layouts. Frames load lazily, one at a time.

* ``otb``: ``<root>/<Seq>/groundtruth_rect.txt`` and ``<root>/<Seq>/img/0001.jpg`` ...
* ``lasot``: ``<root>/<class>/<class>-<n>/groundtruth.txt``, ``img/00000001.jpg``, optional
  ``full_occlusion.txt`` / ``out_of_view.txt`` (flags mark absent frames)
* ``got10k``: ``<root>/<Seq>/groundtruth.txt`` and frames ``00000001.jpg`` in the same folder, optional
  ``absence.label``; test splits give only the first GT row
* ``trackingnet``: ``<root>/anno/<Seq>.txt`` and ``<root>/frames/<Seq>/0.jpg`` ... (one TRAIN_k/TEST chunk)
* ``youtube_vos``: ``<root>/JPEGImages/<video>/<frame>.jpg`` and ``<root>/Annotations/<video>/<frame>.png``
  (palette PNG, pixel value = object id); one sequence per (video, object), with masks, annotated frames only
* ``coco``: ``<root>/annotations/instances_<split>.json`` and images in ``<root>/<split>/`` (or
  ``<root>/images/<split>/``); one single-frame sequence per non-crowd instance of at least 8x8 px, with
  its mask (polygons, or RLE in either COCO encoding). The trainer pairs such a frame with itself, as
  the paper does with image datasets.

GT rows of absent frames become all zeros (LaSOT's convention, understood by ``metrics``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from .results import read_boxes
from ..errors import ArRosError

DATASETS = ("otb", "lasot", "got10k", "trackingnet", "youtube_vos", "coco")
MIN_COCO_SIZE = 8  # px: smaller instances are too small to learn corners from
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ArRosError, ValueError):
    """A dataset folder that does not have the expected layout."""


@dataclass
class SequenceInfo:
    """One sequence: its name, frame files in order, and GT boxes (rows of zeros where absent)."""

    name: str
    frames: List[Path]
    gt: np.ndarray
    masks: Optional[List[Path]] = None   # label PNGs (YouTube-VOS); object ``object_id`` is the target
    object_id: int = 0
    mask_loader: Optional[Callable[[int], np.ndarray]] = None  # frame index -> 0/1 mask (COCO)

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

    def mask(self, index: int) -> Optional[np.ndarray]:
        """Float32 0/1 mask of the target on frame ``index`` (None for box-only datasets)."""
        if self.mask_loader is not None:
            return self.mask_loader(index).astype(np.float32)
        if self.masks is None:
            return None
        from PIL import Image as PILImage  # OpenCV turns palette PNGs into colours; PIL keeps the indices
        try:
            labels = np.asarray(PILImage.open(self.masks[index]))
        except OSError as err:
            raise DatasetError(f"cannot read mask {self.masks[index]}: {err}") from None
        if labels.ndim == 3:  # saved as colour: fall back to the first channel
            labels = labels[..., 0]
        return (labels == self.object_id).astype(np.float32)


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


@contextlib.contextmanager
def _one_sequence(name: str, problems: Optional[Dict[str, str]]):
    """Read one sequence; with ``problems`` (a dict), its layout error is recorded there under its name
    and the other sequences are still read (evaluation reports a broken sequence and goes on)."""
    try:
        yield
    except ValueError as err:  # DatasetError, or read_boxes on a malformed GT file
        if problems is None:
            raise
        problems[name] = str(err)


def _otb(root: Path, problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    out = []
    for seq in sorted(p for p in root.iterdir() if p.is_dir()):
        gts = sorted(seq.glob("groundtruth_rect*.txt"))
        if not gts:
            continue
        with _one_sequence(seq.name, problems):
            frames = _frames_in(seq / "img")
            gt = read_boxes(gts[0])
            out.append(_finish(seq.name, frames[: len(gt)], gt))
    return out


def _lasot(root: Path, problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    out = []
    for gt_file in sorted(root.glob("*/*/groundtruth.txt")) or sorted(root.glob("*/groundtruth.txt")):
        seq = gt_file.parent
        with _one_sequence(seq.name, problems):
            frames = _frames_in(seq / "img")
            gt = read_boxes(gt_file)
            absent = _flags(seq / "full_occlusion.txt", len(gt)) | _flags(seq / "out_of_view.txt", len(gt))
            out.append(_finish(seq.name, frames, gt, absent))
    return out


def _got10k(root: Path, problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    out = []
    for gt_file in sorted(root.glob("*/groundtruth.txt")):
        seq = gt_file.parent
        with _one_sequence(seq.name, problems):
            frames = _frames_in(seq)
            gt = read_boxes(gt_file)
            absent = _flags(seq / "absence.label", len(gt))
            out.append(_finish(seq.name, frames, gt, absent))
    return out


def _trackingnet(root: Path, problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    out = []
    anno = root / "anno"
    if not anno.is_dir():
        raise DatasetError(f"{root}: no anno/ folder (TrackingNet chunk layout: anno/ and frames/)")
    for gt_file in sorted(anno.glob("*.txt")):
        with _one_sequence(gt_file.stem, problems):
            frames = _frames_in(root / "frames" / gt_file.stem)
            out.append(_finish(gt_file.stem, frames, read_boxes(gt_file)))
    return out


def _youtube_vos(root: Path, problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    from PIL import Image as PILImage  # palette PNGs keep their indices only through PIL
    out = []
    ann_root, img_root = root / "Annotations", root / "JPEGImages"
    if not ann_root.is_dir() or not img_root.is_dir():
        raise DatasetError(f"{root}: expected Annotations/ and JPEGImages/ (YouTube-VOS layout)")
    for video in sorted(p for p in ann_root.iterdir() if p.is_dir()):
        masks = sorted(video.glob("*.png"), key=_numeric_key)
        per_object: dict = {}
        for m in masks:
            labels = np.asarray(PILImage.open(m))
            for obj in np.unique(labels):
                if obj == 0 or obj == 255:
                    continue
                ys, xs = np.nonzero(labels == obj)
                box = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
                per_object.setdefault(int(obj), []).append((m, box))
        for obj, items in per_object.items():
            frames = [img_root / video.name / (m.stem + ".jpg") for m, _ in items]
            missing = [f for f in frames if not f.is_file()]
            if missing:
                raise DatasetError(f"{video.name}: no image for {missing[0].name}")
            out.append(SequenceInfo(f"{video.name}_{obj}", frames, np.array([b for _, b in items], np.float64),
                                    masks=[m for m, _ in items], object_id=obj))
    return out


def rle_counts(counts: Union[str, List[int]]) -> List[int]:
    """Run lengths of a COCO RLE: a list already, or COCO's compressed string (6-bit groups, offset 48:
    5 value bits plus a continuation bit, sign-extended; runs after the second are stored as deltas)."""
    if not isinstance(counts, str):
        return [int(c) for c in counts]
    out: List[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise DatasetError("truncated RLE string")
            c = ord(counts[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def coco_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 0/1 mask of a COCO segmentation: polygons ``[[x, y, ...], ...]`` or RLE ``{counts, size}``.

    A malformed segmentation raises :class:`DatasetError` saying what is wrong."""
    try:
        return _coco_mask(segmentation, height, width)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"malformed COCO segmentation ({type(err).__name__}: {err})") from None


def _coco_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, dict):
        h, w = (int(v) for v in segmentation.get("size", (height, width)))
        runs = rle_counts(segmentation["counts"])
        if sum(runs) != h * w or any(r < 0 for r in runs):
            raise DatasetError(f"RLE runs cover {sum(runs)} pixels, the mask has {h * w}")
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)  # starts with a run of zeros
        return flat.reshape(w, h).T.copy()  # column-major
    mask = np.zeros((height, width), np.uint8)
    polygons = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32)
                for p in segmentation if len(p) >= 6]
    if polygons:
        cv2.fillPoly(mask, polygons, 1)
    return mask


def _coco(root: Path, problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    files = sorted((root / "annotations").glob("instances_*.json"))
    if not files:
        raise DatasetError(f"{root}: expected annotations/instances_<split>.json (COCO layout)")
    out = []
    for path in files:
        split = path.stem[len("instances_"):]
        folder = next((f for f in (root / split, root / "images" / split) if f.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{root}: no image folder {split}/ or images/{split}/ for {path.name}")
        try:
            data = json.loads(path.read_text())
            images = {im["id"]: im for im in data["images"]}
            annotations = data["annotations"]
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}: not a COCO instances file ({type(err).__name__}: {err})") from None
        for ann in annotations:
            try:
                x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
                image = images.get(ann.get("image_id"))
                if ann.get("iscrowd") or image is None or min(w, h) < MIN_COCO_SIZE or not ann.get("segmentation"):
                    continue
                loader = functools.partial(_first_frame_mask, ann["segmentation"], int(image["height"]),
                                           int(image["width"]))
                out.append(SequenceInfo(f"{split}/{ann['id']}", [folder / image["file_name"]],
                                        np.array([[x, y, w, h]], np.float64), mask_loader=loader))
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                which = ann.get("id", "?") if isinstance(ann, dict) else repr(ann)
                raise DatasetError(f"{path}: malformed annotation {which} ({type(err).__name__}: {err})") from None
    return out


def _first_frame_mask(segmentation: Any, height: int, width: int, index: int) -> np.ndarray:
    return coco_mask(segmentation, height, width)


_READERS = {"otb": _otb, "lasot": _lasot, "got10k": _got10k, "trackingnet": _trackingnet,
            "youtube_vos": _youtube_vos, "coco": _coco}


def open_dataset(kind: str, root: Union[str, Path], names: Optional[List[str]] = None,
                 problems: Optional[Dict[str, str]] = None) -> List[SequenceInfo]:
    """All sequences of a dataset folder (optionally only ``names``).

    With ``problems`` (a dict), a sequence of a folder-per-sequence layout (OTB, LaSOT, GOT-10k,
    TrackingNet) that cannot be read is recorded there (name -> reason) instead of failing the whole
    dataset."""
    if kind not in _READERS:
        raise DatasetError(f"unknown dataset {kind!r}; choose from {DATASETS}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    seqs = _READERS[kind](root, problems)
    if names:
        wanted = set(names)
        seqs = [s for s in seqs if s.name in wanted]
        missing = wanted - {s.name for s in seqs}
        if missing:
            raise DatasetError(f"{root}: no sequence(s) {sorted(missing)}")
    if not seqs and not problems:
        raise DatasetError(f"{root}: no {kind} sequences found")
    return seqs
