"""Commands that run or score refinement: score, demo, make-bag, replay, live-replay, eval, data."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..options import CLOSED_LOOP_GATES, QUALITY_FLAGS
from .common import EXIT_SKIPPED, _given_gates, _model_kwargs, _refiner, _set_threads, _writable_folder

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.boxes import Box


def _cmd_score(args: argparse.Namespace) -> int:
    from ..eval import metrics
    from ..data.results import read_boxes
    for path in (args.gt, args.pred):
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory; score takes two text files of x,y,w,h rows")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
    result = metrics.score(read_boxes(args.pred), read_boxes(args.gt))
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"AUC {result.auc * 100:.2f}  precision@20px {result.precision * 100:.2f}  "
              f"norm.precision@0.2 {result.norm_precision * 100:.2f}  AO {result.ao * 100:.2f}  "
              f"SR50 {result.sr50 * 100:.2f}  SR75 {result.sr75 * 100:.2f}  "
              f"({result.frames} frames, {result.absent_frames} absent)")
    return 0

def _cmd_demo(args: argparse.Namespace) -> int:
    from .. import demo
    _set_threads(args)
    model = {**_model_kwargs(args), **_given_gates(args)}  # the keep gates: None = each loop's default
    demo.run(args.out, frames=args.frames, base=args.base, **model, progress=not args.no_progress)
    return 0

def _cmd_make_bag(args: argparse.Namespace) -> int:
    from ..eval import bags
    _check_make_bag(args)
    if args.dataset:
        from ..data.base_trackers import jittered_gt, run_opencv
        from ..data.datasets import open_dataset
        from ..data.results import read_boxes
        (seq,) = open_dataset(args.dataset, args.root, [args.sequence])
        gt = [tuple(r) for r in seq.gt] if len(seq.gt) == len(seq) else None
        if args.predictions:
            base: List[Optional[Box]] = [tuple(r) for r in read_boxes(args.predictions)]
            if len(base) != len(seq):
                raise ValueError(f"{args.predictions}: {len(base)} rows for {len(seq)} frames")
        elif args.base == "jitter":
            if gt is None:
                raise ValueError("jittered GT needs full ground truth; pass --predictions")
            base = jittered_gt(gt, args.seed)
        else:
            base = run_opencv(seq.images(), tuple(seq.gt[0]), args.base)
        images, n, label = seq.images(), len(seq), f"{args.dataset}/{seq.name}"
    else:
        from ..eval.benchmark import base_boxes
        from ..data.synthetic import Sequence
        synth = Sequence(args.seed, args.frames or SYNTHETIC_FRAMES, (args.width or SYNTHETIC_SIZE[0],
                                                                      args.height or SYNTHETIC_SIZE[1]))
        frames = list(synth)
        base = base_boxes(synth, frames, args.base, seed=args.seed)
        gt = [f.box for f in frames]
        images, n, label = (f.image for f in frames), len(frames), f"synthetic seed {args.seed}"
    path = bags.write_sequence(args.out, images, base, gt, fps=args.fps, storage=args.storage,
                               compressed=args.compressed, overwrite=args.force, progress=not args.no_progress)
    print(f"wrote {path} ({n} frames of {label}, base '{args.predictions or args.base}', {args.storage})")
    return 0

SYNTHETIC_FRAMES, SYNTHETIC_SIZE = 150, (640, 480)  # make-bag's synthetic sequence unless told otherwise

def _check_make_bag(args: argparse.Namespace) -> None:
    """Refuse option combinations make-bag would otherwise ignore, before anything is read or written."""
    if args.dataset:
        for flag in ("root", "sequence"):
            if not getattr(args, flag):
                raise ValueError(f"--dataset {args.dataset} needs --{flag}")
        if not os.path.isdir(args.root):
            raise FileNotFoundError(f"--root {args.root}: no such folder")
        given = [f"--{f}" for f in ("frames", "width", "height") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set the synthetic sequence; a --dataset sequence has its own")
    elif args.predictions:
        raise ValueError("--predictions needs --dataset, --root and --sequence (the frames those boxes belong "
                         "to); a synthetic sequence takes its base boxes from --base")
    if args.predictions and not os.path.isfile(args.predictions):
        raise FileNotFoundError(f"--predictions {args.predictions}: no such file")

def _resume_hint(args: argparse.Namespace) -> str:
    """How to go on after a stop: the same command without --force (finished sequences are skipped)."""
    import shlex
    if not args.out:
        return "Run with --out DIR to keep finished sequences across runs."
    return "Resume with: ar-refine " + shlex.join(a for a in sys.argv[1:] if a != "--force")

def _run_scale(args: argparse.Namespace, tasks: list, failed: Dict[str, str], settings: Dict[str, Any]) -> int:
    """`eval --dataset` and `replay` of many bags: workers or Ray, resumable in --out, one report."""
    from ..eval import scale
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.out:
        _writable_folder(args.out, "--out")
    model = {**_model_kwargs(args), **_quality_kwargs(args)}
    outcome = scale.evaluate(tasks, model, settings, failed, out=args.out, workers=args.workers,
                             threads=args.threads, ray=args.ray or None, use_ray=args.ray is not None,
                             force=args.force, progress=not args.no_progress, log_workers=not args.json)
    if args.json:
        print(json.dumps(outcome.data))
    scale.print_report(outcome, _resume_hint(args), out=sys.stderr if args.json else sys.stdout)
    return outcome.exit_code

def _replay_many(args: argparse.Namespace) -> int:
    from ..eval.tasks import plan_bags
    for flag in ("mask", "video"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} is for one bag; with several, --out is the report folder")
    tasks = plan_bags(args.bag, base=args.base, loop=args.loop, image_topic=args.image_topic,
                      detections_topic=args.detections_topic, gt_topic=args.gt_topic)
    settings = {"bags": [str(p) for p in args.bag], "base": args.base or "recorded", "loop": args.loop}
    return _run_scale(args, tasks, {}, settings)

def _cmd_replay(args: argparse.Namespace) -> int:
    from ..eval import report
    from ..eval.replay import replay
    from ..eval.bags import bag_folder
    from ..eval.tasks import is_bag
    import glob
    from pathlib import Path
    first = Path(args.bag[0])
    folder_of_bags = first.is_dir() and not is_bag(first)
    if len(args.bag) > 1 or glob.has_magic(args.bag[0]) or folder_of_bags or args.workers > 1 or args.ray is not None:
        return _replay_many(args)
    args.bag = args.bag[0]
    bag_folder(args.bag)  # a missing bag or metadata.yaml is said before the model loads
    refiner = _refiner(args, **_quality_kwargs(args))
    result = replay(args.bag, refiner, out=args.out, image_topic=args.image_topic,
                    detections_topic=args.detections_topic, gt_topic=args.gt_topic, mask=args.mask,
                    video=args.video, progress=not args.no_progress, overwrite=args.force, storage=args.storage,
                    base_tracker=args.base, loop=args.loop)
    info: Dict[str, Any]  # JSON values of several types
    info = {"frames": result.frames, "refined_frames": result.refined_frames, "unpaired": result.unpaired,
            "bad_images": result.bad_images, "bad_messages": result.bad_messages, "fallbacks": result.fallbacks,
            "kept": result.kept, "lost": result.lost,
            "fps": round(result.refined_frames / max(result.seconds, 1e-9), 2),
            "output": str(result.output) if result.output else None}
    if args.base:
        info.update(base=args.base, loop=args.loop, reseeds=result.reseeds, failed_reseeds=result.failed_reseeds)
        if args.loop == "closed" and refiner.runner.quality:
            info["reseed_below"] = refiner.reseed_below
    if result.gt:
        info["scores"] = {k: v.to_dict() for k, v in result.scores().items()}
    if args.json:
        print(json.dumps(info))
    else:
        print(", ".join(f"{k}: {v}" for k, v in info.items() if k != "scores"))
        if result.gt:
            print(report.table(result.scores()))
    return 0

def _cmd_live_replay(args: argparse.Namespace) -> int:
    try:
        from ..ros.live_replay import live_replay
    except ImportError as err:
        raise RuntimeError(f"live replay needs ROS 2 (rclpy and the built ar_ros interfaces): {err}; "
                           "source tools/setup_env.sh, or use `replay` (offline, no ROS)") from None
    from ..eval.bags import bag_folder
    bag_folder(args.bag)
    report = live_replay(args.bag, out=args.out, **_model_kwargs(args), threads=args.threads, rate=args.rate,
                         detections_topic=args.detections_topic, overwrite=args.force, progress=not args.no_progress)
    info = report.summary()
    print(json.dumps(info) if args.json else ", ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}"
                                                      for k, v in info.items()))
    return 0

def _eval_sequences(suite_name: str):
    """The suite's sequences, or None (after one line on stderr) for 'real' without the fetched data."""
    if suite_name != "real":
        from ..data.synthetic import suite
        return suite(suite_name)
    from ..data.real_data import RealDataMissing
    from ..eval.real_suite import real_suite
    try:
        return real_suite()
    except RealDataMissing as err:
        print(f"ar-refine eval: skipped: {err}", file=sys.stderr)
        return None

def _quality_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The quality-head options (QUALITY_FLAGS) a command has (``eval``, ``replay``), by their Refiner names;
    not the keep gate (quality_margin), which _model_kwargs gives with its loop's default, nor reseed_below
    outside a closed loop (it feeds nothing back there, so it is no part of the model key that a rerun of
    ``--dataset`` / many bags in ``--out`` must match)."""
    closed = getattr(args, "loop", "open") == "closed"
    return {name: getattr(args, name) for name in QUALITY_FLAGS
            if hasattr(args, name) and name not in CLOSED_LOOP_GATES and (closed or name != "reseed_below")}

def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path
    import numpy as np
    from ..draw import draw_targets
    from ..eval import report
    from ..eval.benchmark import run_suite, summary
    if args.calibration:
        if args.dataset:
            raise ValueError("--calibration goes with --suite (a --dataset run has its own report in --out)")
        _writable_folder(os.path.dirname(os.path.abspath(args.calibration)), "--calibration's folder")
    if args.dataset:
        from ..eval.tasks import plan_dataset
        tasks, failed = plan_dataset(args.dataset, args.base_results, args.base, args.loop)
        settings = {"dataset": args.dataset, "base": f"results:{args.base_results}" if args.base_results
                    else args.base, "loop": args.loop}
        return _run_scale(args, tasks, failed, settings)
    for flag, value in (("--base-results", args.base_results), ("--ray", args.ray),
                        ("--workers", args.workers != 1 or None)):
        if value is not None:
            raise ValueError(f"{flag} goes with --dataset KIND:PATH (a --suite runs in this process)")
    if args.out:
        _writable_folder(args.out, "--out")
    sequences = _eval_sequences(args.suite)
    if sequences is None:
        return EXIT_SKIPPED
    refiner = _refiner(args, **_quality_kwargs(args))
    if args.calibration and not refiner.runner.quality:
        raise ValueError("--calibration needs a model with a quality head (this one has none: train one with "
                         "`ar-refine train --init-from MODEL --quality-only`)")
    results = run_suite(refiner, sequences, base=args.base, progress=None if args.json else print, loop=args.loop)
    totals = summary(results)
    data = {"suite": args.suite, "base": args.base, "loop": args.loop, "box_mode": refiner.resolved_box_mode(),
            "keep_iou": refiner.keep_iou, **({"quality_margin": refiner.quality_margin} if refiner.runner.quality
                                             else {}),
            **({"reseed_below": refiner.reseed_below} if refiner.runner.quality and args.loop == "closed" else {}),
            "summary": {k: v.to_dict() for k, v in totals.items()},
            "sequences": {r.name: {"base": r.base.to_dict(), "refined": r.refined.to_dict(),
                                   "refine_ms": r.refine_ms, "fallbacks": r.fallbacks, "reseeds": r.reseeds,
                                   "failed_reseeds": r.failed_reseeds, "kept": r.kept, "lost": r.lost,
                                   **({"twin_frames": int(r.quality.on_twin.sum())}  # refined box on a twin
                                      if r.quality is not None and r.quality.on_twin is not None else {})}
                          for r in results},
            "kept": sum(r.kept for r in results), "lost": sum(r.lost for r in results)}
    if args.calibration:
        from ..eval.calibration import QualityPairs, calibration_figure, figures, format_figures, without_twins
        pairs = QualityPairs.concat([r.quality for r in results if r.quality is not None])
        name = f"suite '{args.suite}', base {args.base}" + (" (closed loop)" if args.loop == "closed" else "")
        sets = without_twins(name, pairs)
        figs = {set_name: figures(set_pairs) for set_name, set_pairs in sets.items()}
        everything, *without = figs.values()
        data["calibration"] = {k: round(v, 4) for k, v in everything.items()}
        if pairs.on_twin is not None:  # synthetic suites: the frames no single-frame estimate can get right
            data["calibration_twin_frames"] = int(pairs.on_twin.sum())
        if without:
            data["calibration_without_twins"] = {k: round(v, 4) for k, v in without[0].items()}
        calibration_figure(sets, args.calibration)
        if not args.json:
            for set_name, f in figs.items():
                print(format_figures(set_name, f))
            print(f"plot: {args.calibration}")
    if args.json:
        print(json.dumps(data))
    else:
        print(report.table(totals))
        print(f"base boxes kept: {data['kept']}, frames with the target flagged lost: {data['lost']}")
        twins = [s["twin_frames"] for s in data["sequences"].values() if "twin_frames" in s]
        if any(twins):
            print(f"refined boxes on a twin of the target (a distractor no single frame tells apart): {sum(twins)} "
                  f"frames in {sum(1 for n in twins if n)} sequences")
        if args.loop == "closed":
            print(f"re-seeds: {sum(r.reseeds for r in results)}, refused by OpenCV (tracker went on): "
                  f"{sum(r.failed_reseeds for r in results)}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.suite}_{args.base}" + ("_closed" if args.loop == "closed" else "")
        report.write_json(out / f"eval_{stem}.json", data)
        report.plot_per_sequence(out / f"auc_{stem}.png", [r.name for r in results],
                                 [r.base.auc for r in results], [r.refined.auc for r in results],
                                 title=f"AUC per sequence, suite '{args.suite}', base '{args.base}'")
        report.plot_curves(out / f"success_{stem}.png", {
            "base": (np.concatenate([r.base_boxes[1:] for r in results]), np.concatenate([r.gt[1:] for r in results])),
            "refined": (np.concatenate([r.refined_boxes[1:] for r in results]),
                        np.concatenate([r.gt[1:] for r in results]))}, title=f"suite '{args.suite}', base '{args.base}'")
        gains = [r.refined.auc - r.base.auc for r in results]
        rows = {}
        for label, i in (("best", int(np.argmax(gains))), ("worst", int(np.argmin(gains)))):
            r, seq = results[i], sequences[i]
            picks = np.linspace(1, len(seq) - 1, 4).astype(int)
            rows[f"{label}: {r.name} (AUC {r.base.auc * 100:.1f} -> {r.refined.auc * 100:.1f})"] = [
                draw_targets(seq[t].image, [("t", r.base_boxes[t], r.refined_boxes[t], 1.0, False)], gt=r.gt[t])
                for t in picks]
        report.contact_sheet(out / f"contact_{stem}.png", rows)
        if not args.json:
            print(f"wrote {out}/eval_{stem}.json, auc_{stem}.png, success_{stem}.png, contact_{stem}.png")
    return 0

def _cmd_data(args: argparse.Namespace) -> int:
    from ..data import real_data
    if args.action == "where":
        print(real_data.data_dir() if args.dest is None else args.dest)
        return 0
    if args.action == "gt":
        return _data_gt(args)
    real_data.fetch(args.dest, progress=not args.no_progress, opencv_deb=args.opencv_deb, force=args.force)
    return 0

def _data_gt(args: argparse.Namespace) -> int:
    """Regenerate the real suite's GT from the fetched video, compare it with the committed file, draw a sheet."""
    from pathlib import Path
    from ..data import real_data
    from ..eval import real_suite
    root = Path(args.dest) if args.dest else real_data.data_dir()
    out = Path(args.out) if args.out else root / real_suite.GT_FILE.name
    gt = real_suite.make_gt(args.dest, progress=not args.no_progress)
    real_suite.write_gt(gt, out)
    st = gt["stats"]
    print(f"wrote {out}: {st['sequences']} sequences, {st['trusted_frames']} GT frames, {st['absent_frames']} "
          f"absent; the two methods differ by {st.get('disagreement_px', {}).get('side_mean', float('nan'))} px "
          "per side on average")
    same = out.resolve() == real_suite.GT_FILE.resolve() or \
        real_suite.load_gt(out)["sequences"] == real_suite.load_gt()["sequences"]
    print(f"committed GT {real_suite.GT_FILE}: {'identical boxes' if same else 'DIFFERENT boxes'}")
    sheet = Path(args.sheet) if args.sheet else out.with_suffix(".png")
    real_suite.gt_contact_sheet(real_suite.real_suite(args.dest, out), sheet)
    print(f"contact sheet {sheet}")
    return 0
