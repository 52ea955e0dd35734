"""Commands about a model: info, check-bf16, export, train."""
from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from .common import _set_threads, _writable_folder

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path


def _info_export(path: Union[str, Path], as_json: bool, verbose: bool) -> int:
    """`info` on a folder from `export onnx`: the model's summary, graphs, int8, TensorRT engines and their keys."""
    from ..backends.onnx import INT8_FILES, read_manifest
    from ..backends.tensorrt import engine_keys
    from ..model.network import NetConfig
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
    from ..engine.masks import resolve_box_mode
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
    from ..model import load_checkpoint
    from ..engine.refiner import DEFAULT_CHECKPOINT
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
    from ..eval.precision_check import main_check
    _set_threads(args)
    return main_check(args.checkpoint, args.suite)

def _cmd_export(args: argparse.Namespace) -> int:
    if args.format == "tensorrt":
        from ..backends.tensorrt import adopt_engines, build_engines
        if args.adopt:
            out = adopt_engines(args.out)
            print(f"checked the engines in {out}/ and keyed them to this GPU and TensorRT version")
        else:
            out = build_engines(args.out)
            print(f"wrote fp16 engines to {out}/ (keyed by GPU and TensorRT version)")
        return 0
    _writable_folder(args.out, "OUT_DIR")
    from ..backends.onnx import FILES
    from ..backends.onnx_export import export_onnx, max_box_difference
    from ..model import load_network
    from ..engine.refiner import DEFAULT_CHECKPOINT
    path = args.checkpoint or DEFAULT_CHECKPOINT
    net, _ = load_network(path)
    out = export_onnx(net, args.out, source=str(path))
    diff = max_box_difference(net, out)
    print(f"wrote {out}/ ({', '.join(FILES.values())}); ONNX Runtime vs torch: "
          f"max box difference {diff:.4f} px")
    if diff >= 0.05:
        raise RuntimeError(f"exported model disagrees with torch by {diff:.3f} px (limit 0.05)")
    if args.int8:
        from ..backends.onnx import read_manifest
        from ..backends.onnx_export import drop_int8, quantize_int8
        from ..train.int8_frames import calibration_batches
        from ..engine.refiner import Refiner
        from ..eval.benchmark import AGREEMENT_MIN_IOU, agreement
        from ..data.synthetic import suite
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

def _cmd_train(args: argparse.Namespace) -> int:
    from ..train.trainer import TrainConfig, train
    cfg = TrainConfig(out_dir=args.out, depth=args.depth, input_size=args.input_size, batch_size=args.batch_size,
                      epochs=args.epochs, iters_per_epoch=args.iters, lr=args.lr, lr_step=args.lr_step,
                      backbone_weights=args.backbone_weights or "", threads=args.threads,
                      data=args.data or ["synthetic"], backbone=args.backbone,
                      backbone_lr_scale=args.backbone_lr_scale, small_jitter_prob=args.small_jitter,
                      init_from=args.init_from or "", init_backbone=args.init_backbone, freeze=args.freeze,
                      corner_stride=args.corner_stride, mask_head=args.mask_head, freeze_box=args.freeze_box,
                      quality_only=args.quality_only, far_prob=args.far_prob,
                      quality_pairs=args.quality_pairs)
    path = train(cfg, progress=not args.no_progress)
    print(f"final checkpoint: {path}")
    return 0
