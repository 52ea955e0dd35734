"""Choose box_mode "fused"'s constants (and keep_iou with them) on a suite, open loop.

    python tools/box_mode_sweep.py [--suite validation] [--checkpoint C] [--bases jitter,oracle,csrt]

Refines every sequence twice per base tracker with the keep_iou gate off: once for the corner head's box,
once for the mask's box alone (box_mode "fused" with min IoU 0 and weight 1; the corner box where the mask
has no region). The fused box and the keep_iou gate are then applied per setting, which in open loop gives
what ``ar-refine eval --box-mode fused --keep-iou T`` gives with those constants (fusing is linear per
axis and IoU does not change under the crop's per-axis scaling, so fusing frame boxes equals fusing crop
boxes). Where the plausibility gate fell back in either run the sweep fuses with the base box, while the
Refiner fuses first and gates after: rare, but there the figures are approximate. Prints refined AUC
per base for every setting and the mean over bases. Choose on ``validation``, never on ``reference`` or
``real``.
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional

import numpy as np

from ar_ros import Refiner
from ar_ros.engine.boxes import iou_rows

from keep_iou_sweep import frames_of, gated_auc, sweep_setup  # noqa: E402  (tools/ is the script's folder)

MIN_IOUS = (0.5, 0.6, 0.7, 0.8)
WEIGHTS = (0.3, 0.5, 0.7, 1.0)
KEEP_IOUS = (0.0, 0.85, 0.88, 0.9)


def fused_rows(c_rows: np.ndarray, m_rows: np.ndarray, min_iou: Optional[float], weight: float) -> np.ndarray:
    """frames_of() rows of the corner run with the output replaced by the fused box (None: corner box)."""
    rows = c_rows.copy()
    if min_iou is not None:
        c, m = c_rows[:, 4:8], m_rows[:, 4:8]
        agree = iou_rows(c, m) >= min_iou
        rows[:, 4:8] = np.where(agree[:, None], (1 - weight) * c + weight * m, c)  # xywh: linear like xyxy
    return rows


def main() -> None:
    args, seqs, bases = sweep_setup(__doc__)
    corner_ref = Refiner(args.checkpoint, box_mode="corner")
    mask_ref = Refiner(args.checkpoint, box_mode="fused")
    mask_ref.fuse_min_iou, mask_ref.fuse_weight = 0.0, 1.0
    runs: Dict[str, tuple] = {}
    for base in bases:
        runs[base] = ([frames_of(corner_ref, seq, base) for seq in seqs],
                      [frames_of(mask_ref, seq, base) for seq in seqs])
        print(f"refined {len(seqs)} sequences from base {base}", flush=True)
    settings = [(None, 0.0, k) for k in KEEP_IOUS] + list(itertools.product(MIN_IOUS, WEIGHTS, KEEP_IOUS))
    print(f"{'box':>22} {'keep_iou':>8} " + " ".join(f"{b:>8}" for b in bases) + f" {'mean':>8}")
    for min_iou, weight, keep in settings:
        aucs = [gated_auc([fused_rows(c, m, min_iou, weight) for c, m in zip(*runs[b])], keep) for b in bases]
        name = "corner" if min_iou is None else f"fused iou>={min_iou} w={weight}"
        print(f"{name:>22} {keep:>8} " + " ".join(f"{a:8.2f}" for a in aucs) + f" {np.mean(aucs):8.2f}")


if __name__ == "__main__":
    main()
