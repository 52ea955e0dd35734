"""How well a box-quality estimate matches the truth, and the calibration map that makes it match better.

From pairs of (predicted IoU, true IoU), for the refined box (``quality``) and the base box
(``base_quality``):

* **Spearman** rank correlation: does a higher quality mean a better box;
* **expected calibration error** (ECE, 10 equal-width bins of the prediction): the count-weighted mean of
  |mean prediction - mean true IoU| per bin, i.e. how far "0.8" is from meaning 0.8;
* **AUROC** of ``base_quality - quality`` as a detector of "the base box is better than the refined box"
  (what the engine's keep rule, ``engine.quality.choose``, decides on).

:func:`fit_isotonic` fits the monotone calibration map (pool-adjacent-violators, then sampled at
``model.quality.CALIBRATION_KNOTS`` knots) that ``QualityHead.set_calibration`` stores with the weights;
:func:`best_margin` and :func:`lost_threshold` choose the engine's defaults on the same validation data;
:func:`rule_table` compares keep rules (the head's margin, ``keep_iou``, ``keep_iou`` with the head as a veto).
:func:`suite_pairs` collects the pairs on whole sequences (a suite and a base tracker, as ``eval`` runs
them), :func:`calibration_figure` draws the reliability diagram and the scatter.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..options import DEFAULTS

Values = Union[Sequence[float], np.ndarray]  # numbers, as a sequence or an array

#: What a report prints per set of pairs, in this order.
FIGURES = ("n", "spearman_quality", "ece_quality", "mae_quality", "spearman_base", "ece_base", "mae_base",
           "auroc_base_better", "base_better_share")


@dataclass
class QualityPairs:
    """Predicted and true IoUs of the output box (``quality``) and of the base box (``base``), (N,) each;
    ``agreement`` where known (runs on sequences): the IoU of the refined box with the base box, what the
    engine's ``keep_iou`` rule tests; ``on_twin`` where known (synthetic sequences): the refined box sits on
    a twin of the target (``data.synthetic.Sequence.distractor_boxes``), which no single frame tells apart."""

    pred_quality: np.ndarray
    true_quality: np.ndarray
    pred_base: np.ndarray
    true_base: np.ndarray
    agreement: Optional[np.ndarray] = None
    on_twin: Optional[np.ndarray] = None

    @classmethod
    def concat(cls, parts: Iterable["QualityPairs"]) -> "QualityPairs":
        parts = list(parts)
        joined = [np.concatenate([getattr(p, f) for p in parts] or [np.zeros(0)]).astype(np.float64)
                  for f in ("pred_quality", "true_quality", "pred_base", "true_base")]
        optional = []
        for name, dtype in (("agreement", np.float64), ("on_twin", bool)):
            columns = [getattr(p, name) for p in parts]
            known = bool(parts) and all(c is not None for c in columns)
            optional.append(np.concatenate(columns).astype(dtype) if known else None)
        return cls(joined[0], joined[1], joined[2], joined[3], *optional)

    def subset(self, keep: np.ndarray) -> "QualityPairs":
        """The pairs where ``keep`` (N,) is true."""
        return QualityPairs(*(None if v is None else v[keep] for v in
                              (self.pred_quality, self.true_quality, self.pred_base, self.true_base, self.agreement,
                               self.on_twin)))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.true_quality)


def without_twins(name: str, pairs: QualityPairs) -> Dict[str, QualityPairs]:
    """``{name: pairs}``, and where some refined boxes sit on a twin of the target (``on_twin``) also the
    pairs without those frames: no per-frame estimate can tell a twin from its target, so both are reported."""
    sets = {name: pairs}
    if pairs.on_twin is not None and pairs.on_twin.any():
        sets[f"{name}, {int(pairs.on_twin.sum())} frames on a twin left out"] = pairs.subset(~pairs.on_twin)
    return sets


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(uniq) < len(x):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(pred: Values, true: Values) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    a, b = _ranks(np.asarray(pred)), _ranks(np.asarray(true))
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def ece(pred: Values, true: Values, bins: int = 10) -> float:
    """Expected calibration error of a [0, 1] regression: ``bins`` equal-width bins of ``pred``."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    idx = np.clip((pred * bins).astype(int), 0, bins - 1)
    total = 0.0
    for k in range(bins):
        sel = idx == k
        if sel.any():
            total += sel.sum() * abs(pred[sel].mean() - true[sel].mean())
    return float(total / max(len(pred), 1))


def auroc(scores: Values, labels: Union[Sequence[bool], np.ndarray]) -> float:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (Mann-Whitney, ties count half);
    NaN when a class is empty."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _ranks(scores) + 1.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def figures(pairs: QualityPairs) -> Dict[str, float]:
    """The :data:`FIGURES` of one set of pairs."""
    better = pairs.true_base > pairs.true_quality
    return {"n": float(len(pairs)),
            "spearman_quality": spearman(pairs.pred_quality, pairs.true_quality),
            "ece_quality": ece(pairs.pred_quality, pairs.true_quality),
            "mae_quality": float(np.abs(pairs.pred_quality - pairs.true_quality).mean()),
            "spearman_base": spearman(pairs.pred_base, pairs.true_base),
            "ece_base": ece(pairs.pred_base, pairs.true_base),
            "mae_base": float(np.abs(pairs.pred_base - pairs.true_base).mean()),
            "auroc_base_better": auroc(pairs.pred_base - pairs.pred_quality, better),
            "base_better_share": float(better.mean())}


def isotonic(x: Values, y: Values) -> Tuple[np.ndarray, np.ndarray]:
    """Least-squares non-decreasing fit of ``y`` on ``x`` (pool adjacent violators): the blocks' mean x
    and fitted value, both sorted."""
    order = np.argsort(np.asarray(x, np.float64), kind="mergesort")
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    values: List[float] = []
    weights: List[float] = []
    xsum: List[float] = []
    for xi, yi in zip(xs, ys):
        values.append(yi)
        weights.append(1.0)
        xsum.append(xi)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            xsum[-2] += xsum[-1]
            weights[-2] = w
            del values[-1], weights[-1], xsum[-1]
    return np.array(xsum) / np.array(weights), np.array(values)


def fit_isotonic(raw: Values, true: Values, knots: int) -> Tuple[np.ndarray, np.ndarray]:
    """A monotone calibration map from raw predictions to the true IoU: ``knots`` increasing points from 0
    to 1 (at quantiles of ``raw`` in between, so the map is detailed where predictions are) and the
    non-decreasing values there (the isotonic fit, linearly interpolated between its blocks)."""
    bx, by = isotonic(raw, true)
    inner = np.quantile(np.asarray(raw, np.float64), np.linspace(0, 1, knots)[1:-1])
    xk = np.concatenate(([0.0], np.clip(inner, 1e-4, 1 - 1e-4), [1.0]))
    for i in range(1, knots):  # strictly increasing (repeated quantiles where predictions pile up)
        xk[i] = max(xk[i], xk[i - 1] + 1e-6)
    xk = xk / xk[-1]
    return xk, np.clip(np.interp(xk, bx, by), 0.0, 1.0)


def keeps_base(pairs: QualityPairs, margin: Optional[float] = None, keep_iou: float = 0.0,
               veto: Optional[float] = None) -> np.ndarray:
    """Where a keep rule outputs the base box, (N,) bools. ``margin``: the head's rule
    (``engine.quality.choose``: base_quality >= quality + margin); ``keep_iou`` > 0: the rule for models
    without a head (the refined box overlaps the base box by more than ``keep_iou``: needs
    :attr:`QualityPairs.agreement`), with ``veto`` the head may overrule it (kept there only where
    base_quality >= quality + veto). Both given: either keeps."""
    keep = np.zeros(len(pairs), bool)
    if margin is not None:
        keep |= pairs.pred_base >= pairs.pred_quality + margin
    if keep_iou > 0.0:
        if pairs.agreement is None:
            raise ValueError("keep_iou needs pairs with their agreement (pairs from whole sequences)")
        close = pairs.agreement > keep_iou
        if veto is not None:
            close &= pairs.pred_base >= pairs.pred_quality + veto
        keep |= close
    return keep


def chosen_iou(pairs: QualityPairs, margin: Optional[float] = None, keep_iou: float = 0.0,
               veto: Optional[float] = None) -> float:
    """Mean true IoU of the box a keep rule (:func:`keeps_base`) outputs: the base box where it keeps it,
    else the refined box (no rule: the refined box always)."""
    use_base = keeps_base(pairs, margin, keep_iou, veto)
    return float(np.where(use_base, pairs.true_base, pairs.true_quality).mean())


KEEP_IOU = float(DEFAULTS["keep_iou"])  # the rule of models without a head, as the node runs it: the reference

#: The keep rules :func:`rule_table` compares: (name, keyword arguments of :func:`keeps_base`)
RULES = (("refined box always", {}), (f"keep_iou {KEEP_IOU:.2f}", {"keep_iou": KEEP_IOU}),
         *((f"head, margin {m:.2f}", {"margin": m}) for m in (-0.02, -0.01, 0.0, 0.02, 0.04, 0.06, 0.1)),
         *((f"keep_iou {k:.2f}, head veto {v:+.2f}", {"keep_iou": k, "veto": v})
           for k in (0.8, 0.85, 0.9) for v in (-0.1, -0.05, 0.0)),
         *((f"head 0.04 or keep_iou {k:.2f} with veto 0", {"margin": 0.04, "keep_iou": k, "veto": 0.0})
           for k in (0.85, 0.9)))


def rule_means(sets: Dict[str, QualityPairs], rules: Sequence[Tuple[str, Dict]] = RULES
               ) -> Dict[str, Dict[str, float]]:
    """Mean true IoU of the chosen box, rule by rule (``{rule: {set: mean}}``), on the sets of pairs that
    carry their agreement (the others are left out)."""
    names = [n for n, p in sets.items() if p.agreement is not None]
    return {label: {n: chosen_iou(sets[n], **kw) for n in names} for label, kw in rules}


def rule_table(sets: Dict[str, QualityPairs], rules: Sequence[Tuple[str, Dict]] = RULES) -> str:
    """:func:`rule_means` as a table: rules as rows, sets as columns, and per rule the least and the summed
    difference to the default ``keep_iou`` (:data:`KEEP_IOU`) over the sets."""
    names = [n for n, p in sets.items() if p.agreement is not None]
    if not names:
        return "(no set of pairs with agreement: rules need pairs from whole sequences)"
    ref = np.array([chosen_iou(sets[n], keep_iou=KEEP_IOU) for n in names])
    header = f"{'rule':42s}" + "".join(f"{f'[{i}]':>8s}" for i in range(len(names)))
    lines = ["mean true IoU of the chosen box; columns: " + "; ".join(f"[{i}] {n}" for i, n in enumerate(names)),
             header + f"  min/sum vs keep_iou {KEEP_IOU:.2f}"]
    for label, means in rule_means(sets, rules).items():
        v = np.array([means[n] for n in names])
        delta = v - ref
        lines.append(f"{label:42s}" + "".join(f"{x:8.4f}" for x in v) + f"  {delta.min():+.4f} {delta.sum():+.4f}")
    return "\n".join(lines)


def best_margin(sets: Union[QualityPairs, Sequence[QualityPairs]],
                candidates: Sequence[float] = tuple(np.round(np.arange(-0.1, 0.31, 0.01), 2))
                ) -> Tuple[float, Dict[float, float]]:
    """The keep margin (``engine.quality.choose``) that maximises the mean true IoU of the chosen box (for
    several sets, the mean over the sets of each set's mean: every base weighs the same, as when ``keep_iou``
    was chosen on the validation suite's jittered GT, oracle and CSRT), and that mean for every candidate."""
    sets = [sets] if isinstance(sets, QualityPairs) else list(sets)
    means = {float(m): float(np.mean([chosen_iou(p, m) for p in sets])) for m in candidates}
    best = max(means, key=lambda m: (round(means[m], 4), -abs(m)))  # ties: the margin nearest 0
    return best, means


def lost_threshold(pairs: QualityPairs, off_iou: float = 0.1,
                   candidates: Sequence[float] = tuple(np.round(np.arange(0.05, 0.61, 0.01), 2))) -> Tuple[float, Dict]:
    """The quality below which a single frame counts towards "lost": the lowest threshold whose balanced
    accuracy (true minus false positive rate) of ``quality < t`` for "the output box is off the target"
    (true IoU < ``off_iou``) is within 0.01 of the best (the lowest: an output that is merely poor is not
    lost). Returns it and the (true positive rate, false positive rate) of every candidate."""
    off = pairs.true_quality < off_iou
    rates = {}
    for t in candidates:
        flag = pairs.pred_quality < t
        tpr = float(flag[off].mean()) if off.any() else float("nan")
        fpr = float(flag[~off].mean()) if (~off).any() else float("nan")
        rates[float(t)] = (tpr, fpr)
    top = max(tpr - fpr for tpr, fpr in rates.values())
    return min(t for t, (tpr, fpr) in rates.items() if tpr - fpr >= top - 0.01), rates


def suite_pairs(net, sequences: Iterable, base: str = "jitter", progress=None) -> QualityPairs:
    """Pairs on whole sequences, the way the engine refines them: ``eval.benchmark.run_suite`` (template
    from frame 0's box, each later frame's base box: jittered GT, the GT itself, an OpenCV tracker) with a
    refiner on ``net`` as it is (eager, fp32, on the network's device, ``box_mode auto``), and the pairs it
    collects (``eval.benchmark.quality_pairs``). Frames without GT or a refinable base box are skipped.
    ``net`` is a network with a quality head."""
    from ..engine.refiner import Refiner
    from .benchmark import run_suite
    if not net.config.quality_head:
        raise ValueError("suite_pairs needs a network with a quality head")
    device = str(next(net.parameters()).device)
    refiner = Refiner(net, device=device, precision="fp32", box_mode="auto", fold_batchnorm=False,
                      channels_last=False, cpu_graphs=False)
    try:
        results = run_suite(refiner, sequences, base, progress=progress)
    finally:
        refiner.close()
    return QualityPairs.concat(r.quality for r in results if r.quality is not None)


def calibration_figure(sets: Dict[str, QualityPairs], path: str | Path, bins: int = 10) -> Path:
    """Reliability diagram (mean true IoU per bin of predicted IoU, with the diagonal) and a predicted vs
    true scatter of ``quality`` for every named set, one row per set, into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    fig, axes = plt.subplots(len(sets), 2, figsize=(9, 4.2 * len(sets)), squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for row, (name, pairs) in zip(axes, sets.items()):
        f = figures(pairs)
        for pred, true, label, color in ((pairs.pred_quality, pairs.true_quality, "quality (output box)", "C0"),
                                         (pairs.pred_base, pairs.true_base, "base_quality (base box)", "C1")):
            idx = np.clip((pred * bins).astype(int), 0, bins - 1)
            xs = [pred[idx == k].mean() for k in range(bins) if (idx == k).any()]
            ys = [true[idx == k].mean() for k in range(bins) if (idx == k).any()]
            row[0].plot(xs, ys, "o-", color=color, label=label)
        row[0].plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        row[0].set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted IoU", ylabel="mean true IoU",
                   title=textwrap.fill(f"{name}: reliability (ECE {f['ece_quality']:.3f})", 60))
        row[0].title.set_fontsize(9)
        row[0].set_xticks(edges, minor=True)
        row[0].legend(loc="upper left", fontsize=8)
        row[1].scatter(pairs.pred_quality, pairs.true_quality, s=4, alpha=0.3, color="C0")
        row[1].plot([0, 1], [0, 1], "k--", lw=1)
        row[1].set(xlim=(0, 1), ylim=(0, 1), xlabel="quality (predicted IoU)", ylabel="true IoU of the output box",
                   title=textwrap.fill(f"{name}: Spearman {f['spearman_quality']:.2f}, n={int(f['n'])}", 60))
        row[1].title.set_fontsize(9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def format_figures(name: str, f: Dict[str, float]) -> str:
    """One line of a report."""
    return (f"{name}: n={int(f['n'])} quality: Spearman {f['spearman_quality']:.3f} ECE {f['ece_quality']:.3f} "
            f"MAE {f['mae_quality']:.3f} | base_quality: Spearman {f['spearman_base']:.3f} ECE {f['ece_base']:.3f} "
            f"MAE {f['mae_base']:.3f} | AUROC base better {f['auroc_base_better']:.3f} "
            f"(base better on {f['base_better_share'] * 100:.0f}%)")
