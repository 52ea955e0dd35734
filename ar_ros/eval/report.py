"""Tables, JSON and plots of base vs refined accuracy."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .metrics import SUCCESS_THRESHOLDS, Scores, center_errors, ious, success_curve, precision_curve, absent

COLUMNS = (("auc", "AUC"), ("precision", "Prec@20"), ("norm_precision", "NPrec@.2"), ("ao", "AO"),
           ("sr50", "SR50"), ("sr75", "SR75"))


def table(rows: Dict[str, Scores]) -> str:
    """Fixed-width table, percentages, one row per entry (e.g. base / refined)."""
    head = f"{'':10s}" + "".join(f"{label:>10s}" for _, label in COLUMNS)
    lines = [head]
    for name, s in rows.items():
        lines.append(f"{name:10s}" + "".join(f"{getattr(s, key) * 100:10.2f}" for key, _ in COLUMNS))
    if "base" in rows and "refined" in rows:
        lines.append(f"{'gain':10s}" + "".join(
            f"{(getattr(rows['refined'], k) - getattr(rows['base'], k)) * 100:+10.2f}" for k, _ in COLUMNS))
    return "\n".join(lines)


def write_json(path: Path, data: Dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def plot_curves(path: Path, curves: Dict[str, Sequence[np.ndarray]], title: str = "") -> Path:
    """Success and precision plots (OTB style) for several box sets against the same GT.

    ``curves`` maps a label to (pred boxes, gt boxes) arrays, frames x 4.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, (pred, gt) in curves.items():
        keep = ~absent(gt)
        iou = ious(pred[keep], gt[keep])
        sc = success_curve(iou)
        ax1.plot(SUCCESS_THRESHOLDS, sc, label=f"{label} [AUC {sc.mean() * 100:.1f}]")
        err = center_errors(pred[keep], gt[keep])
        pc = precision_curve(err)
        ax2.plot(np.arange(len(pc)), pc, label=f"{label} [{(err <= 20).mean() * 100:.1f}]")
    ax1.set(xlabel="IoU threshold", ylabel="success rate", title="Success plot", xlim=(0, 1), ylim=(0, 1.02))
    ax2.set(xlabel="centre error threshold (px)", ylabel="precision", title="Precision plot", ylim=(0, 1.02))
    ax2.axvline(20, color="grey", lw=0.5, ls="--")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if ax is ax1 else "lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_iou_over_time(path: Path, series: Dict[str, np.ndarray], gt: np.ndarray, title: str = "") -> Path:
    """Per-frame IoU of each box set, to see where refinement helps or hurts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 3))
    for label, pred in series.items():
        ax.plot(ious(pred, gt), label=label, lw=1)
    ax.set(xlabel="frame", ylabel="IoU with GT", ylim=(0, 1.02), title=title or "IoU per frame")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_sequence(path: Path, names: List[str], base: List[float], refined: List[float],
                      title: str = "AUC per sequence") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.5), 3.5))
    ax.bar(x - 0.2, np.array(base) * 100, 0.4, label="base")
    ax.bar(x + 0.2, np.array(refined) * 100, 0.4, label="refined")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="AUC (%)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def contact_sheet(path: Path, rows: Dict[str, List[np.ndarray]], thumb_width: int = 240) -> Path:
    """A PNG grid: one row per label (e.g. best / worst sequence), frames drawn with boxes, left to right."""
    import cv2
    lines = []
    for label, frames in rows.items():
        thumbs = []
        for f in frames:
            scale = thumb_width / f.shape[1]
            thumbs.append(cv2.resize(f, (thumb_width, int(round(f.shape[0] * scale))), interpolation=cv2.INTER_AREA))
        line = np.concatenate(thumbs, axis=1)
        banner = np.full((22, line.shape[1], 3), 255, np.uint8)
        cv2.putText(banner, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.concatenate([banner, line], axis=0))
    width = max(line.shape[1] for line in lines)
    sheet = np.concatenate([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
                            for line in lines], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return path


def worse_sequences(sequences: Dict[str, Dict], key: str = "auc") -> str:
    """One line naming the sequences whose refined ``key`` is below the base's (worst first)."""
    drops = sorted((s["refined"][key] - s["base"][key], name) for name, s in sequences.items()
                   if s.get("base") and s.get("refined") and s["refined"][key] < s["base"][key])
    label = dict(COLUMNS)[key]
    if not drops:
        return f"got worse ({label}): none of {len(sequences)} sequences"
    items = ", ".join(f"{name} {sequences[name]['base'][key] * 100:.1f} -> {sequences[name]['refined'][key] * 100:.1f}"
                      for _, name in drops)
    return f"got worse ({label}): {len(drops)} of {len(sequences)} sequences: {items}"


def write_sequence_csv(path: Path, sequences: Dict[str, Dict], failed: Dict[str, str]) -> Path:
    """One row per sequence: base and refined scores, their gain, counts; failed sequences with their reason."""
    import csv
    keys = [k for k, _ in COLUMNS]
    counts = ("frames", "refine_ms", "fallbacks", "reseeds", "failed_reseeds")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sequence", *(f"base_{k}" for k in keys), *(f"refined_{k}" for k in keys), "gain_auc",
                      *counts, "failed"])
        for name, s in sequences.items():
            base, refined = s.get("base"), s.get("refined")
            scores = [""] * (2 * len(keys) + 1) if not base or not refined else \
                [*(f"{base[k]:.6f}" for k in keys), *(f"{refined[k]:.6f}" for k in keys),
                 f"{refined['auc'] - base['auc']:+.6f}"]
            out.writerow([name, *scores, *(s.get(c, "") for c in counts), ""])
        for name, reason in failed.items():
            out.writerow([name, *([""] * (2 * len(keys) + 1 + len(counts))), reason])
    tmp.replace(path)
    return path
