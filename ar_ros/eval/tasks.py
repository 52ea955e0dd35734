"""Per-sequence evaluation tasks: what one worker does with one dataset sequence or one bag.

A task is small and picklable (paths and a few boxes, never images), so the same task runs in this
process, in a spawned worker process or as a Ray task on another machine; it returns a plain
JSON-ready *record* (boxes, scores, counts, time) that the driver writes to disk. Images load lazily,
one at a time, so a 3000-frame LaSOT sequence never sits in memory whole.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.base_trackers import BASES, OPENCV_TRACKERS, check_loop
from ..data.datasets import SequenceInfo, open_dataset
from ..data.results import read_boxes
from ..errors import ArRosError
from . import bags
from .metrics import score

Progress = Callable[[int], None]  # frames just processed
Record = Dict[str, Any]


class EvalInputError(ArRosError, ValueError):
    """An evaluation input (dataset folder, result files, bag list) that cannot be used; names it."""


class _Frame:
    """One dataset frame: ``box`` is its GT row (absent, all zero, past a first-row-only GT);
    ``image`` loads (once) when asked for."""

    def __init__(self, frames: "LazyFrames", index: int) -> None:
        self._frames, self.index = frames, index

    @property
    def image(self) -> np.ndarray:
        return self._frames.image(self.index)

    @property
    def box(self) -> Tuple[float, ...]:
        gt = self._frames.info.gt
        return tuple(float(v) for v in gt[self.index]) if self.index < len(gt) else (0.0,) * 4


class LazyFrames:
    """A dataset sequence as the list of frames that :mod:`.benchmark` refines, loading each image on
    first use and keeping only the last one (a closed loop reads the frame again to re-seed)."""

    def __init__(self, info: SequenceInfo, progress: Optional[Progress] = None) -> None:
        self.info, self._progress = info, progress
        self._last: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self._seen = -1

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, index: int) -> _Frame:
        return _Frame(self, index if index >= 0 else len(self) + index)

    def __iter__(self) -> Iterator[_Frame]:
        return (_Frame(self, i) for i in range(len(self)))

    def image(self, index: int) -> np.ndarray:
        if self._last[0] != index:
            self._last = (index, self.info.image(index))
            if index > self._seen:
                if self._progress is not None:
                    self._progress(index - self._seen)
                self._seen = index
        return self._last[1]  # type: ignore[return-value]


def sequence_seed(name: str) -> int:
    """The jitter seed of a named sequence: the same on every machine and every run (not ``hash``)."""
    return zlib.crc32(name.encode("utf-8"))


def _rows(boxes: Sequence) -> np.ndarray:
    return np.array([b if b is not None else (np.nan,) * 4 for b in boxes], np.float64).reshape(-1, 4)


def _scores(base: np.ndarray, refined: np.ndarray, gt: Optional[np.ndarray]) -> Optional[Dict[str, Dict]]:
    """Base and refined OPE scores from frame 1 on (frame 0 holds the init box in both), as eval --suite."""
    if gt is None:
        return None
    return {"base": score(base[1:], gt[1:]).to_dict(), "refined": score(refined[1:], gt[1:]).to_dict()}


@dataclass
class Task:
    """One unit of work. ``frames`` orders the queue (longest first) and drives the progress bar."""

    name: str
    frames: int

    def run(self, refiner, progress: Optional[Progress] = None) -> Record:
        raise NotImplementedError


@dataclass
class DatasetTask(Task):
    """A dataset sequence refined from a tracker's result rows (``base_rows``) or a bundled base tracker."""

    info: SequenceInfo = field(repr=False, default=None)  # type: ignore[assignment]
    base: str = "jitter"
    loop: str = "open"
    base_rows: Optional[np.ndarray] = field(repr=False, default=None)

    def run(self, refiner, progress: Optional[Progress] = None) -> Record:
        from .benchmark import base_boxes, closed_loop_sequence, refine_sequence
        t0 = time.perf_counter()
        frames: Any = LazyFrames(self.info, progress)  # list-like: what benchmark's loops take
        full_gt = len(self.info.gt) == len(self.info)
        reseeds = failed_reseeds = 0
        if self.loop == "closed":
            boxes, refined, ms, fallbacks, reseeds, failed_reseeds = closed_loop_sequence(refiner, frames, self.base)
        else:
            if self.base_rows is not None:
                boxes = [None if np.isnan(r).any() else tuple(r) for r in self.base_rows]
            else:
                boxes = base_boxes(frames, frames, self.base, seed=sequence_seed(self.name))
            refined, ms, fallbacks = refine_sequence(refiner, frames, boxes)
        base = _rows(boxes)
        refined[0] = base[0]  # row 0 is the init box, as trackers publish their results
        gt = self.info.gt.astype(np.float64) if full_gt else None
        return {"name": self.name, "frames": len(self.info), "refinements": int((~np.isnan(base[:, 0])).sum()),
                "seconds": time.perf_counter() - t0, "refine_ms": ms, "fallbacks": fallbacks, "reseeds": reseeds,
                "failed_reseeds": failed_reseeds, "base_boxes": base.tolist(), "refined_boxes": refined.tolist(),
                "gt": None if gt is None else gt.tolist(), "scores": _scores(base, refined, gt)}


@dataclass
class BagTask(Task):
    """A rosbag2 replayed offline (:func:`.replay.replay`); its first target's boxes are scored."""

    path: str = ""
    base: Optional[str] = None
    loop: str = "open"
    image_topic: Optional[str] = None  # None: the bag's first image topic
    detections_topic: str = bags.BASE_TOPIC
    gt_topic: str = bags.GT_TOPIC

    def run(self, refiner, progress: Optional[Progress] = None) -> Record:
        from .replay import replay
        t0 = time.perf_counter()
        refiner.clear()  # a session takes the refiner's targets as its own
        result = replay(self.path, refiner, progress=False, base_tracker=self.base, loop=self.loop,
                        image_topic=self.image_topic, detections_topic=self.detections_topic, gt_topic=self.gt_topic)
        if progress is not None:
            progress(result.frames)
        base, refined = result.boxes("base"), result.boxes("refined")
        scores = {k: v.to_dict() for k, v in result.scores().items()} if result.gt else None
        return {"name": self.name, "frames": result.frames, "refinements": result.refined_frames,
                "seconds": time.perf_counter() - t0,
                "refine_ms": result.seconds * 1e3 / max(result.refined_frames, 1), "fallbacks": result.fallbacks,
                "reseeds": result.reseeds, "failed_reseeds": result.failed_reseeds, "base_boxes": base.tolist(),
                "refined_boxes": refined.tolist(), "gt": [g.tolist() for g in result.gt] if result.gt else None,
                "scores": scores}


def plan_dataset(spec: str, base_results: Optional[str] = None, base: str = "jitter",
                 loop: str = "open") -> Tuple[List[Task], Dict[str, str]]:
    """Tasks for every sequence of ``KIND:PATH``, and the sequences that cannot run (name -> reason).

    With ``base_results`` (a folder of ``<sequence>.txt``, x,y,w,h rows) the tracker's boxes are refined
    in open loop; a missing file or one whose row count differs from the frame count fails its sequence.
    """
    kind, sep, root = spec.partition(":")
    if not sep or not root:
        raise EvalInputError(f"--dataset {spec!r}: expected KIND:PATH, e.g. lasot:/data/LaSOT/test")
    if base not in BASES:
        raise EvalInputError(f"--base {base!r}: choose from {', '.join(BASES)}")
    check_loop(base, loop)
    if base_results is not None and loop == "closed":
        raise EvalInputError("--base-results are fixed boxes: they cannot take the refined box back (--loop closed)")
    results = Path(base_results) if base_results is not None else None
    if results is not None and not results.is_dir():
        raise EvalInputError(f"--base-results {results}: folder not found")
    failed: Dict[str, str] = {}
    infos = open_dataset(kind, root, problems=failed)
    tasks: List[Task] = []
    for info in infos:
        rows = None
        if results is not None:
            rows, problem = _result_rows(results, info)
        elif base in ("jitter", "oracle") and len(info.gt) != len(info):
            problem = f"base '{base}' is made from the ground truth, which has {len(info.gt)} rows for " \
                      f"{len(info)} frames; pass --base-results or --base {'/'.join(OPENCV_TRACKERS)}"
        else:
            problem = ""
        if problem:
            failed[info.name] = problem
            continue
        tasks.append(DatasetTask(info.name, len(info), info=info, base=base if results is None else "results",
                                 loop=loop, base_rows=rows))
    return tasks, failed


def _result_rows(folder: Path, info: SequenceInfo) -> Tuple[Optional[np.ndarray], str]:
    path = folder / f"{info.name}.txt"
    if not path.is_file():
        return None, f"no result file {path}"
    try:
        rows = read_boxes(path)
    except ValueError as err:
        return None, str(err)
    if len(rows) != len(info):
        return None, f"{path}: {len(rows)} rows for {len(info)} frames"
    return rows, ""


def plan_bags(inputs: Sequence[str], base: Optional[str] = None, loop: str = "open", image_topic: Optional[str] = None,
              detections_topic: str = bags.BASE_TOPIC, gt_topic: str = bags.GT_TOPIC) -> List[Task]:
    """Tasks for bags given as bag folders or files, folders of bags, or glob patterns (topics as
    :func:`.replay.replay` takes them)."""
    paths = expand_bags(inputs)
    tasks: List[Task] = []
    names: Dict[str, Path] = {}
    for path in paths:
        name = path.stem if path.is_file() else path.name
        if name in names:
            raise EvalInputError(f"two bags named {name!r}: {names[name]} and {path}; rename one")
        names[name] = path
        frames = 0
        try:  # metadata only; a bag that cannot be opened fails when its task runs, with the reason
            reader = bags.open_reader(path)
            try:
                frames = sum(c.msgcount for c in reader.connections
                             if c.msgtype in (bags.IMAGE_TYPE, bags.COMPRESSED_TYPE))
            finally:
                reader.close()
        except Exception:  # noqa: BLE001 - any reader failure is the task's to report
            pass
        tasks.append(BagTask(name, frames, path=str(path), base=base, loop=loop, image_topic=image_topic,
                             detections_topic=detections_topic, gt_topic=gt_topic))
    return tasks


def is_bag(path: Path) -> bool:
    """A rosbag2 folder (metadata.yaml, .mcap or .db3 inside) or a bag's .mcap / .db3 file."""
    if path.is_file():
        return path.suffix in (".mcap", ".db3")
    return path.is_dir() and ((path / "metadata.yaml").is_file() or any(path.glob("*.mcap"))
                              or any(path.glob("*.db3")))


def expand_bags(inputs: Sequence[str]) -> List[Path]:
    """Bag paths from bags, folders holding bags (one level) and glob patterns, in the order given."""
    import glob
    out: List[Path] = []
    for item in inputs:
        matches = [Path(p) for p in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise EvalInputError(f"{item}: no bag matches this pattern")
        for path in matches:
            if not path.exists():
                raise EvalInputError(f"bag not found: {path}")
            if is_bag(path):
                out.append(path)
                continue
            inside = sorted(p for p in path.iterdir() if is_bag(p)) if path.is_dir() else []
            if not inside:
                raise EvalInputError(f"{path}: neither a bag nor a folder of bags")
            out.extend(inside)
    return out
