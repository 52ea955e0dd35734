#!/usr/bin/env python3
"""How high a rank correlation the real suite can show: a perfect quality estimate against noisy ground truth.

    python tools/spearman_ceiling.py [--base jitter --base csrt --base oracle] [--side-noise PX ...]

The real suite's ground truth is made by two background-subtraction methods (docs/real_data.md); their box
sides differ by ``disagreement_px.side_mean`` pixels on average (stored in ``eval/pets09_s2l1_gt.json``).
With independent, normal errors of the same size per method, each side of a method's box is off by
sigma = side_mean * sqrt(pi) / 2 and the stored box, the mean of the two, by sigma / sqrt(2) (the default
noise; ``--side-noise`` tries others). An error both methods share is not in that figure, so the true
ceiling may be lower.

The refiner runs on the suite as ``eval`` does (shipped model unless ``--checkpoint``, nothing kept:
``quality_margin`` 1, so every box is the refined one). For each draw, the "true" box is the stored box
moved by that noise on every side; a perfect estimate predicts the refined box's IoU with it, and is scored
as the head is, by its Spearman correlation with the IoU against the stored box. Printed per base: the
head's Spearman, and the perfect estimate's median (5th-95th percentile) over the draws.
"""
import argparse
import json
import math
import sys

import numpy as np
import torch

from ar_ros.cli.common import EXIT_SKIPPED
from ar_ros.data.base_trackers import BASES
from ar_ros.data.real_data import RealDataMissing
from ar_ros.engine.boxes import iou_rows
from ar_ros.engine.refiner import Refiner
from ar_ros.eval.benchmark import Decisions, base_boxes, refine_sequence
from ar_ros.eval.calibration import spearman
from ar_ros.eval.real_suite import GT_FILE, real_suite


def stored_box_noise(gt_file=GT_FILE) -> float:
    """Per-side standard deviation (px) of the stored ground truth's error, from the methods' disagreement."""
    side_mean = json.loads(gt_file.read_text())["stats"]["disagreement_px"]["side_mean"]
    return side_mean * math.sqrt(math.pi) / 2 / math.sqrt(2)


def perturbed(boxes: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(N,4) x,y,w,h boxes with every side moved by N(0, sigma) px."""
    e = rng.normal(0.0, sigma, (len(boxes), 4))
    x1, y1 = boxes[:, 0] + e[:, 0], boxes[:, 1] + e[:, 1]
    x2, y2 = boxes[:, 0] + boxes[:, 2] + e[:, 2], boxes[:, 1] + boxes[:, 3] + e[:, 3]
    return np.stack([x1, y1, x2 - x1, y2 - y1], 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", action="append", default=[], choices=BASES,
                   help="base trackers (default: jitter, csrt, oracle)")
    p.add_argument("--side-noise", type=float, nargs="+", help="per-side noise of the stored box, px "
                                                               "(default: from the methods' disagreement)")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.draws < 1 or args.threads < 1 or any(s < 0 for s in args.side_noise or []):
        p.error("--draws and --threads must be at least 1, --side-noise at least 0")
    torch.set_num_threads(args.threads)
    try:
        sequences = real_suite()
    except RealDataMissing as err:
        print(f"skipped: {err}")
        return EXIT_SKIPPED
    noise = args.side_noise or [round(stored_box_noise(), 3)]
    refiner = Refiner(args.checkpoint, precision="fp32", quality_margin=1.0)
    if not refiner.runner.quality:
        p.error("the model has no quality head")
    rng = np.random.default_rng(0)
    print(f"per-side noise of the stored box: {', '.join(f'{s} px' for s in noise)}; {args.draws} draws")
    for base in args.base or ["jitter", "csrt", "oracle"]:
        pred, refined, truth = [], [], []
        for seq in sequences:
            frames = list(seq)
            decisions = Decisions()
            refine_sequence(refiner, frames, base_boxes(seq, frames, base, seed=seq.seed), decisions=decisions)
            for i, q, _, raw, _ in decisions.quality:
                if frames[i].box[2] > 0 and frames[i].box[3] > 0:
                    pred.append(q)
                    refined.append(raw)
                    truth.append(frames[i].box)
        boxes, gt = np.array(refined, np.float64), np.array(truth, np.float64)
        measured = iou_rows(boxes, gt)
        line = f"{base}: n={len(gt)}, IoU of the refined box {measured.mean():.3f} (sd {measured.std():.3f}); " \
               f"head's Spearman {spearman(pred, measured):.3f}; perfect estimate's:"
        for sigma in noise:
            rhos = [spearman(iou_rows(boxes, perturbed(gt, sigma, rng)), measured) for _ in range(args.draws)]
            line += f" {np.median(rhos):.3f} ({np.percentile(rhos, 5):.3f}-{np.percentile(rhos, 95):.3f}) at {sigma} px;"
        print(line.rstrip(";"), flush=True)
    refiner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
