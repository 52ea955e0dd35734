#!/usr/bin/env python3
"""Calibrate and report a quality head: Spearman, ECE and AUROC on validation pairs and suites.

    python tools/quality_report.py runs/quality/best.pt --fit runs/quality/calibrated.pt --png out/q.png
    python tools/quality_report.py ar_ros/weights/ar_ros_default.pt --suite validation --suite real

With ``--fit OUT``, the monotone calibration map of each output (``eval.calibration.fit_isotonic``) is
fitted on the VALIDATION pairs only (synthetic validation seeds + composites of held-out photos, with the
training mix of base boxes: nearly right, the paper's jitter, off the target; one seed of pairs), stored in
the head and written to ``OUT``; the lost threshold is chosen on the same pairs, the keep margin on the
validation suite (``--suite validation --base jitter --base oracle --base csrt``: the margin with the largest
mean over those bases of the chosen box's mean IoU, ``eval.calibration.best_margin``, as ``keep_iou`` was
chosen), and both printed. The figures are then measured
on *other* validation pairs (another seed) and on the suites asked for (``--suite validation``: the
synthetic validation suite; ``--suite real``: PETS09, needs ``ar-refine data fetch``), with each ``--base``
tracker (jitter, oracle, csrt ...). ``--rules`` prints, per suite, the mean true IoU of the box each keep rule
outputs (``eval.calibration.rule_table``: the head's margin, ``keep_iou``, ``keep_iou`` with the head as a veto).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ar_ros.eval.calibration import (QualityPairs, best_margin, calibration_figure, chosen_iou, figures,
                                     fit_isotonic, format_figures, lost_threshold, rule_means, rule_table,
                                     suite_pairs, without_twins)
from ar_ros.model import load_checkpoint
from ar_ros.model.checkpoint import write_checkpoint
from ar_ros.model.quality import CALIBRATION_KNOTS
from ar_ros.train.quality import quality_network, quality_targets
from ar_ros.train.sampler import SamplerConfig
from ar_ros.train.trainer import TrainConfig, real_photo_banks

FIT_SEED, REPORT_SEED = 34_567, 45_678  # pairs to fit on, pairs to report on (both validation seeds)


def validation_pairs(net, cfg: TrainConfig, banks: tuple, seed: int, n_batches: int) -> tuple:
    """(calibrated pairs, raw sigmoid predictions (N,2)) on validation pairs of every set, joined."""
    from ar_ros.train.quality import quality_validation
    sampler_cfg = SamplerConfig(input_size=net.config.input_size, search_factor=net.config.search_factor,
                                small_jitter_prob=cfg.small_jitter_prob, far_prob=cfg.far_prob)
    sets = quality_validation(cfg, banks, sampler_cfg, seed=seed, n_batches=n_batches)
    out_pairs, raws = {}, []
    for suffix, batches in sets.items():
        parts = []
        for b in batches:
            inputs, targets, out = quality_targets(net, b)
            with torch.no_grad():
                raws.append(torch.sigmoid(net.quality_head.raw(*inputs)))
            parts.append(QualityPairs(out["quality"].numpy(), targets[:, 0].numpy(), out["base_quality"].numpy(),
                                      targets[:, 1].numpy()))
        out_pairs["validation pairs" + (" (composites)" if suffix else " (synthetic)")] = QualityPairs.concat(parts)
    return out_pairs, torch.cat(raws).numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint with a quality head")
    p.add_argument("--fit", metavar="OUT", help="fit the calibration on validation pairs and write OUT")
    p.add_argument("--pairs", type=int, default=40, help="batches of 16 validation pairs per set (default 40)")
    p.add_argument("--suite", action="append", default=[], help="validation | real | another synthetic suite")
    p.add_argument("--base", action="append", default=[], help="base trackers for the suites (default: jitter)")
    p.add_argument("--png", help="reliability diagram + scatter PNG")
    p.add_argument("--json", help="figures as JSON")
    p.add_argument("--cache", default="runs/quality", help="folder of the photo cut-outs (GrabCut cache)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rules", action="store_true",
                   help="compare keep rules (head margin, keep_iou, keep_iou with the head as a veto) on the suites")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    state, _, meta = load_checkpoint(args.checkpoint)
    net = quality_network(args.checkpoint)
    known = TrainConfig.__dataclass_fields__
    tc = {k: v for k, v in meta.get("train_config", {}).items() if k in known}
    cfg = TrainConfig(**{**tc, "quality_only": False, "init_from": "", "init_backbone": False,
                         "freeze_box": False, "batch_size": 16})
    if not cfg.far_prob and not cfg.small_jitter_prob:
        cfg = TrainConfig(**{**cfg.__dict__, "small_jitter_prob": 0.3, "far_prob": 0.2})
    banks = real_photo_banks(Path(args.cache))
    report = {"checkpoint": args.checkpoint, "command": " ".join(sys.argv), "sets": {}}
    if args.fit:
        t0 = time.time()
        fit_sets, raw = validation_pairs(net, cfg, banks, FIT_SEED, args.pairs)
        fit = QualityPairs.concat(fit_sets.values())
        knots, values = zip(*(fit_isotonic(raw[:, i], true, CALIBRATION_KNOTS)
                              for i, true in enumerate((fit.true_quality, fit.true_base))))
        for name, pairs in fit_sets.items():
            print(format_figures(name + ", before calibration", figures(pairs)))
        net.quality_head.set_calibration(np.stack(knots), np.stack(values))
        calibrated, _ = validation_pairs(net, cfg, banks, FIT_SEED, args.pairs)
        fit = QualityPairs.concat(calibrated.values())
        margin, means = best_margin(fit)
        lost, rates = lost_threshold(fit)
        print(f"fitted on {len(fit)} validation pairs ({time.time() - t0:.0f} s); keep margin {margin:+.2f}: mean IoU "
              f"of the chosen box {means[margin]:.4f} (refined box always: {fit.true_quality.mean():.4f}, "
              f"margin 0: {means.get(0.0, float('nan')):.4f}); lost_quality {lost:.2f}: flags {rates[lost][0] * 100:.0f}% "
              f"of off-target outputs, {rates[lost][1] * 100:.1f}% of the others")
        report["fit"] = {"pairs": len(fit), "margin": margin, "mean_iou_by_margin": means, "lost_quality": lost,
                         "lost_rates": {str(k): v for k, v in rates.items()}}
        head = {k: v.detach().clone() for k, v in net.state_dict().items() if k.startswith("quality_head.")}
        out_meta = {**meta, "quality_calibration": {"fit_pairs": len(fit), "fit_seed": FIT_SEED,
                                                    "margin": margin, "lost_quality": lost}}
        write_checkpoint(args.fit, net.config, {**state, **head}, out_meta)
        print(f"wrote {args.fit}")
    sets, _ = validation_pairs(net, cfg, banks, REPORT_SEED, args.pairs)
    for suite in args.suite:
        for base in args.base or ["jitter"]:
            t0 = time.time()
            if suite == "real":
                from ar_ros.eval.real_suite import real_suite
                sequences = real_suite()
            else:
                from ar_ros.data.synthetic import suite as synthetic_suite
                sequences = synthetic_suite(suite)
            sets[f"{suite} suite, base {base}"] = suite_pairs(net, sequences, base)
            print(f"({suite}/{base}: {time.time() - t0:.0f} s)", flush=True)
    chosen_on = [pairs for name, pairs in sets.items() if name.startswith("validation suite, ")]
    if args.fit and chosen_on:  # the keep margin: chosen on the validation suite's bases (best_margin)
        margin, _ = best_margin(chosen_on)
        for name, pairs in sets.items():
            print(f"{name}: mean IoU of the chosen box at margin {margin:.2f}: {chosen_iou(pairs, margin):.4f} "
                  f"(refined box always: {pairs.true_quality.mean():.4f})")
        out_meta["quality_calibration"]["margin"] = margin
        report["fit"]["margin"] = margin
        write_checkpoint(args.fit, net.config, {**state, **head}, out_meta)
        print(f"keep margin {margin:.2f} (the best mean over the validation suite's {len(chosen_on)} bases); "
              f"wrote {args.fit}")
    for name, pairs in sets.items():
        for set_name, set_pairs in without_twins(name, pairs).items():  # synthetic suites: also without twins
            f = figures(set_pairs)
            report["sets"][set_name] = f
            print(format_figures(set_name, f), flush=True)
    if args.rules:
        print(rule_table(sets), flush=True)
        report["rules"] = rule_means(sets)
    if args.png:
        print(f"wrote {calibration_figure(sets, args.png)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
