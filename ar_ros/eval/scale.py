"""Evaluation at scale: a whole dataset or a folder of bags, on every core, GPU or a Ray cluster, resumable.

:func:`evaluate` runs the tasks of :mod:`.tasks` on the workers of :mod:`.runner` and keeps what each
one finishes: with an output folder, every finished sequence is written at once, atomically (temporary
file + rename), as the refined boxes in the trackers' x,y,w,h text format (``results/<name>.txt``, what
the official toolkits score) and a record (``sequences/<name>.json``: boxes, scores, counts, time). A
rerun with the same folder and settings skips the sequences recorded there (``force`` redoes them);
SIGINT / SIGTERM stop the run, keep what is finished and say how to resume. A sequence that fails is
reported with its reason while the others go on. At the end the folder gets the report: ``eval.json``
(the object ``ar-refine eval --json`` prints), ``sequences.csv`` and success / precision plots.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from ..data.results import write_boxes
from ..progress import progress_bar
from . import report
from .metrics import Scores, average
from .runner import Callbacks, make_backend, run_tasks
from .tasks import EvalInputError, Record, Task
from .worker import worker_specs

log = logging.getLogger(__name__)
SETTINGS_FILE = "run.json"  # what the folder's records were made with; a rerun must match it


@dataclass
class Outcome:
    """What :func:`evaluate` ends with: the report object, and how the run went."""

    data: Dict[str, Any]
    records: Dict[str, Record]
    failed: Dict[str, str]
    interrupted: bool = False
    skipped: int = 0                 # sequences already finished in the output folder
    wall: float = 0.0                # seconds of this run
    worker_seconds: float = 0.0      # summed over the sequences this run refined
    files: List[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all done, 1 some sequence failed, 130 interrupted (as a shell reports SIGINT)."""
        return 130 if self.interrupted else 1 if self.failed else 0


def file_stem(name: str) -> str:
    """A sequence name as a file name (COCO-style names hold a slash)."""
    return name.replace(os.sep, "__").replace("/", "__")


def write_atomic(path: Path, content: Union[str, Callable[[Path], Any]]) -> None:
    """Write ``content`` (text, or a function that writes the file it is given) to a temporary file beside
    ``path`` and rename it into place: a reader (or a rerun after a kill) sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    finally:  # interrupted between the two: no temporary file stays behind
        tmp.unlink(missing_ok=True)


class OutputFolder:
    """The per-sequence files of one run's output folder (see the module docstring)."""

    def __init__(self, root: Path, settings: Dict[str, Any], force: bool) -> None:
        self.root = root
        for sub in ("results", "sequences"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        settings_path = root / SETTINGS_FILE
        if settings_path.is_file() and not force:
            before = json.loads(settings_path.read_text())
            if before != settings:
                diff = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise EvalInputError(f"{root} holds results made with other settings ({', '.join(diff)}); "
                                     "pass --force to redo them there, or another --out")
        write_atomic(settings_path, json.dumps(settings, indent=1))

    def record_path(self, name: str) -> Path:
        return self.root / "sequences" / f"{file_stem(name)}.json"

    def finished(self, name: str) -> Optional[Record]:
        path = self.record_path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:  # cannot happen with atomic writes, unless edited by hand: redo it
            return None

    def save(self, record: Record) -> None:
        """Results file first, record last: the record marks the sequence finished."""
        write_atomic(self.root / "results" / f"{file_stem(record['name'])}.txt",
                     lambda tmp: write_boxes(tmp, np.asarray(record["refined_boxes"], np.float64)))
        write_atomic(self.record_path(record["name"]), json.dumps(record))


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler, ``kill``) stops the run as Ctrl-C does, so finished work is kept."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _BarLog(logging.Handler):
    """Log lines (per-worker status) above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        tqdm.write(self.format(record), file=sys.stderr)


@contextmanager
def _worker_log(enabled: bool) -> Iterator[None]:
    logger = logging.getLogger("ar_ros.eval")
    if not enabled or logger.handlers:
        yield
        return
    handler = _BarLog()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def evaluate(tasks: List[Task], model: Dict[str, Any], settings: Dict[str, Any], failed: Optional[Dict[str, str]] = None,
             out: Optional[Path] = None, workers: int = 1, threads: int = 0, ray: Optional[str] = None,
             use_ray: bool = False, force: bool = False, progress: bool = True, log_workers: bool = True) -> Outcome:
    """Refine and score ``tasks`` on ``workers`` (processes, or Ray actors with ``use_ray`` at address
    ``ray``), keeping finished sequences in ``out``; ``failed`` holds sequences that could not even be
    planned (name -> reason). ``model``: the Refiner's keyword arguments; ``settings``: what the report
    says the run was (dataset, base, loop, ...), also the key that a rerun in ``out`` must match."""
    if workers < 1:
        raise EvalInputError(f"--workers must be >= 1, got {workers}")
    failed = dict(failed or {})
    folder = OutputFolder(Path(out), {**settings, "model": _model_key(model)}, force) if out else None
    records: Dict[str, Record] = {}
    todo = []
    for task in tasks:
        done = folder.finished(task.name) if folder is not None and not force else None
        if done is not None:
            records[task.name] = done
        else:
            todo.append(task)
    outcome = Outcome({}, records, failed, skipped=len(records))
    if outcome.skipped:
        log.info("%d of %d sequences already finished in %s (skipped; --force redoes them)", outcome.skipped,
                 len(tasks), out)
    t0 = time.perf_counter()
    if todo:
        _run(todo, model, outcome, folder, workers, threads, ray, use_ray, progress, log_workers)
    outcome.wall = time.perf_counter() - t0
    outcome.data = report_data(settings, model, records, failed, outcome)
    if folder is not None and not outcome.interrupted:
        outcome.files = write_report(folder.root, outcome.data, records)
    return outcome


def _model_key(model: Dict[str, Any]) -> Dict[str, Any]:
    """The model options that change boxes (the device and threads do not)."""
    return {k: (str(v) if v is not None else None) for k, v in sorted(model.items()) if k != "device"}


def _run(todo: List[Task], model: Dict[str, Any], outcome: Outcome, folder: Optional[OutputFolder], workers: int,
         threads: int, ray: Optional[str], use_ray: bool, progress: bool, log_workers: bool) -> None:
    specs = worker_specs(model, min(workers, len(todo)), threads, spread_gpus=not use_ray)
    bar = progress_bar(sum(t.frames for t in todo), f"eval {len(todo)} sequences", enabled=progress)
    state = {"done": 0, "refinements": 0, "t0": time.perf_counter()}

    def postfix() -> None:
        rate = state["refinements"] / max(time.perf_counter() - state["t0"], 1e-9)
        bar.set_postfix(seq=f"{state['done']}/{len(todo)}", refinements_s=f"{rate:.1f}", failed=len(outcome.failed))

    def started(task: Task, slot: int) -> None:
        log.info("worker %d: %s (%d frames)", slot, task.name, task.frames)

    def done(task: Task, record: Record, slot: int) -> None:
        if folder is not None:
            folder.save(record)
        outcome.records[task.name] = record
        outcome.worker_seconds += record["seconds"]
        state["done"] += 1
        state["refinements"] += record["refinements"]
        log.info("worker %d: %s done in %.1f s (%.1f refinements/s, worker peak memory %.0f MB)", slot, task.name,
                 record["seconds"], record["refinements"] / max(record["seconds"], 1e-9), record["peak_rss_mb"])
        postfix()

    def fail(task: Task, reason: str) -> None:
        outcome.failed[task.name] = reason
        state["done"] += 1
        log.warning("%s failed: %s", task.name, reason)
        bar.update(task.frames)  # its frames will not come: keep the ETA honest
        postfix()

    with _worker_log(log_workers), _sigterm_interrupts():
        backend = None
        try:
            backend = make_backend(specs, ray, use_ray)
            run_tasks(todo, backend, Callbacks(done, fail, bar.update, started))
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            bar.close()
            if backend is not None:
                backend.close()


def report_data(settings: Dict[str, Any], model: Dict[str, Any], records: Dict[str, Record],
                failed: Dict[str, str], outcome: Outcome) -> Dict[str, Any]:
    """The report object: ``eval --suite``'s (summary.base / summary.refined, sequences.<name>) plus
    ``failed`` (name -> reason) and ``timing``."""
    ordered = sorted(records)
    scored = [records[n] for n in ordered if records[n].get("scores")]
    summary = {} if not scored else {
        which: average(Scores(**r["scores"][which]) for r in scored).to_dict() for which in ("base", "refined")}
    box_mode = next((records[n].get("box_mode") for n in ordered if records[n].get("box_mode")), None)
    sequences = {}
    for name in ordered:
        r = records[name]
        entry = {"base": None, "refined": None} if not r.get("scores") else dict(r["scores"])
        entry.update({k: r[k] for k in ("frames", "refine_ms", "fallbacks", "reseeds", "failed_reseeds")})
        sequences[name] = entry
    refinements = sum(records[n]["refinements"] for n in ordered)
    timing = {"wall_s": round(outcome.wall, 3), "worker_s": round(outcome.worker_seconds, 3),
              "speedup": round(outcome.worker_seconds / outcome.wall, 3) if outcome.wall > 0 else None,
              "skipped": outcome.skipped, "refinements": refinements,
              "peak_rss_mb": round(max((records[n].get("peak_rss_mb", 0.0) for n in ordered), default=0.0), 1)}
    return {**settings, "box_mode": box_mode, "keep_iou": model.get("keep_iou"), "summary": summary,
            "sequences": sequences, "failed": dict(sorted(failed.items())), "timing": timing}


def write_report(root: Path, data: Dict[str, Any], records: Dict[str, Record]) -> List[Path]:
    """eval.json, sequences.csv and the plots (base vs refined) into ``root``; returns the files."""
    files = [root / "eval.json", root / "sequences.csv"]
    write_atomic(files[0], json.dumps(data, indent=1))
    report.write_sequence_csv(files[1], data["sequences"], data["failed"])
    scored = [records[n] for n in sorted(records) if records[n].get("gt") is not None]
    if scored:
        gt = np.concatenate([np.asarray(r["gt"], np.float64)[1:] for r in scored])
        curves: Dict[str, Sequence[np.ndarray]] = {which: (np.concatenate([np.asarray(r[f"{which}_boxes"], np.float64)[1:] for r in scored]), gt)
                  for which in ("base", "refined")}
        label = data.get("dataset") or "bags"
        files.append(report.plot_curves(root / "success.png", curves,
                                        title=f"{label}: all frames of {len(scored)} sequences"))
        names = [r["name"] for r in scored]
        files.append(report.plot_per_sequence(root / "auc_per_sequence.png", names,
                                              [r["scores"]["base"]["auc"] for r in scored],
                                              [r["scores"]["refined"]["auc"] for r in scored],
                                              title=f"AUC per sequence, {label}"))
    return files


def print_report(outcome: Outcome, resume: str, out=sys.stdout, err=sys.stderr) -> None:
    """The table (with the sequences that got worse), the timing line, failures and how to resume."""
    data = outcome.data
    if data["summary"]:
        print(report.table({k: Scores(**v) for k, v in data["summary"].items()}), file=out)
        print(report.worse_sequences(data["sequences"]), file=out)
    t = data["timing"]
    if t["worker_s"]:
        print(f"timing: wall {t['wall_s']:.1f} s, worker time {t['worker_s']:.1f} s, speed-up "
              f"{t['speedup']:.2f}x" + (f" ({t['skipped']} sequences skipped: already done)" if t["skipped"] else ""),
              file=out)
    for path in outcome.files[:1]:
        print(f"wrote {path.parent}/: results/<sequence>.txt, " + ", ".join(p.name for p in outcome.files), file=out)
    finished = len(outcome.records)
    total = finished + len(outcome.failed)
    for name, reason in sorted(outcome.failed.items()):
        print(f"failed: {name}: {reason}", file=err)
    if outcome.failed:
        print(f"{len(outcome.failed)} of {total} sequences failed; the others finished", file=err)
    if outcome.interrupted:
        print(f"stopped: {finished} sequences finished and kept. {resume}", file=err)
