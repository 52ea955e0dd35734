"""Choose the Refiner's ``keep_iou`` (do no harm) on a suite, open loop, from one refinement per frame.

    python tools/keep_iou_sweep.py [--suite validation] [--checkpoint C] [--bases jitter,oracle,csrt]

Refines every sequence once per base tracker with the gate off, keeping each frame's base box, the
network's box (``Result.raw_box``) and the GT; the gate is then applied for each threshold, which in open
loop gives exactly what ``ar-refine eval --keep-iou T`` gives (the output does not change the next input).
Closed loop does change it: measure the chosen values there with ``ar-refine eval --loop closed``.
Choose on ``validation`` (and ``composite``), never on ``reference`` or ``real``.
"""
from __future__ import annotations

import argparse
import tempfile
from typing import Dict, List

import numpy as np

from ar_ros import Refiner
from ar_ros.engine.boxes import iou_rows
from ar_ros.engine.session import RefineSession
from ar_ros.eval.benchmark import base_boxes
from ar_ros.eval.metrics import score
from ar_ros.data.synthetic import suite

THRESHOLDS = (0.0, 0.7, 0.75, 0.8, 0.82, 0.84, 0.85, 0.86, 0.88, 0.9, 0.95)


def frames_of(refiner: Refiner, seq, base: str) -> np.ndarray:
    """(frames, 12): base box, gated-off output (raw box, or the base box where the plausibility gate fell
    back), GT; NaN rows where there is no base box."""
    frames = list(seq)
    refiner.clear()
    session = RefineSession(refiner, mode="refine", max_targets=1, target_timeout_ns=10**18)
    rows = np.full((len(frames), 12), np.nan)
    for i, (frame, box) in enumerate(zip(frames, base_boxes(seq, frames, base, seed=seq.seed))):
        rows[i, 8:] = frame.box
        if box is None:
            continue
        res = session.step(frame.image, [("target", box)], stamp_ns=i).results["target"]
        rows[i, :8] = (*box, *res.box)
    return rows


def gated_auc(runs: List[np.ndarray], keep_iou: float) -> float:
    aucs = []
    for rows in runs:
        base, out, gt = rows[:, :4], rows[:, 4:8], rows[:, 8:]
        if keep_iou > 0:
            out = np.where((iou_rows(base, out) > keep_iou)[:, None], base, out)
        aucs.append(score(out[1:], gt[1:]).auc)  # frame 0 is the init box, as in eval
    return float(np.mean(aucs)) * 100


COMPOSITE_SEEDS = (95_000, 95_010)  # the validation suite's seeds (held out from training)


def composite_validation(cache_dir: str = "") -> list:
    """Real-photo composites over the held-out photos (the trainer's validation photos), 640x480, the
    validation suite's seeds: targets and backgrounds no training pair saw, with exact boxes and masks."""
    from pathlib import Path
    from ar_ros.train.composite import CompositeSequence
    from ar_ros.train.trainer import real_photo_banks
    folder = Path(cache_dir or tempfile.mkdtemp(prefix="ar_ros_cutouts_"))
    bank = real_photo_banks(folder)[1]
    return [CompositeSequence(seed, bank, 150, (640, 480)) for seed in range(*COMPOSITE_SEEDS)]


def sweep_setup(doc: str) -> tuple:
    """Parse a sweep tool's options (--suite, --checkpoint, --bases); return (args, sequences, bases).
    ``--suite`` takes a comma-separated list: synthetic suites, ``composite`` (:func:`composite_validation`;
    ``--cutouts DIR`` keeps its GrabCut cut-outs between runs) and ``real``, the PETS09 suite (for reporting
    only: choose on ``validation`` and ``composite``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--suite", default="validation")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--bases", default="jitter,oracle,csrt")
    parser.add_argument("--cutouts", default="", help="folder for the composite suite's cut-outs (cached)")
    args = parser.parse_args()
    seqs = []
    for name in args.suite.split(","):
        if name == "real":
            from ar_ros.eval.real_suite import real_suite
            seqs += real_suite()
        elif name == "composite":
            seqs += composite_validation(args.cutouts)
        else:
            seqs += suite(name)
    return args, seqs, args.bases.split(",")


def main() -> None:
    args, seqs, bases = sweep_setup(__doc__)
    refiner = Refiner(args.checkpoint)
    print(f"box_mode {refiner.box_mode}: {refiner.resolved_box_mode()} boxes")
    runs: Dict[str, List[np.ndarray]] = {b: [frames_of(refiner, seq, b) for seq in seqs] for b in bases}
    print(f"suite '{args.suite}', refined AUC by keep_iou (0 = off); base AUC: " +
          ", ".join(f"{b} {np.mean([score(r[1:, :4], r[1:, 8:]).auc for r in runs[b]]) * 100:.2f}" for b in bases))
    print(f"{'keep_iou':>9s}" + "".join(f"{b:>10s}" for b in bases))
    for t in THRESHOLDS:
        print(f"{t:9.2f}" + "".join(f"{gated_auc(runs[b], t):10.2f}" for b in bases))


if __name__ == "__main__":
    main()
