"""Calibration figures and fits on hand-made values; suite pairs and the PNG on a real (tiny) network."""
import numpy as np
import pytest
import torch

from ar_ros.eval.calibration import (QualityPairs, auroc, best_margin, calibration_figure, ece, figures,
                                     fit_isotonic, isotonic, lost_threshold, spearman, suite_pairs)


def test_spearman_is_one_for_any_increasing_map_and_handles_ties():
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.7])
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3.5, 3.5], [1, 2, 3, 4])[0, 1])
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_ece_is_zero_when_calibrated_and_the_offset_when_shifted():
    true = np.linspace(0.05, 0.95, 50)
    assert ece(true, true) == pytest.approx(0.0)
    assert ece(np.clip(true + 0.1, 0, 0.999), np.clip(true, 0, 0.899)) == pytest.approx(0.1, abs=1e-9)
    # two bins, each off by its own amount, weighted by count: (3 x 0.2 + 1 x 0.4) / 4
    assert ece([0.15, 0.15, 0.15, 0.85], [0.35, 0.35, 0.35, 0.45]) == pytest.approx(0.25)


def test_auroc_separates_ranks_ties_count_half():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.3, 0.6, 0.7], [True, False, True]) == pytest.approx(0.5)
    assert auroc([0.3, 0.6, 0.5], [True, False, True]) == 0.0
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_isotonic_pools_adjacent_violators():
    bx, by = isotonic([0, 1, 2, 3], [1, 3, 2, 4])
    assert by.tolist() == [1.0, 2.5, 4.0] and bx.tolist() == [0.0, 1.5, 3.0]


def test_fit_isotonic_gives_a_monotone_map_that_removes_a_miscalibration():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, 2000)
    raw = np.sqrt(true)  # over-confident: says 0.7 where the truth is 0.49
    knots, values = fit_isotonic(raw, true, 21)
    assert knots[0] == 0.0 and knots[-1] == 1.0 and (np.diff(knots) > 0).all() and (np.diff(values) >= 0).all()
    calibrated = np.interp(raw, knots, values)
    assert ece(raw, true) > 0.1 and ece(calibrated, true) < 0.02


def _pairs(q, tq, b, tb):
    return QualityPairs(*(np.asarray(v, np.float64) for v in (q, tq, b, tb)))


def test_best_margin_and_lost_threshold_on_hand_made_pairs():
    # base better exactly where predicted better by 0.1 or more
    pairs = _pairs([0.9, 0.8, 0.7, 0.5], [0.9, 0.8, 0.6, 0.4], [0.85, 0.95, 0.9, 0.55], [0.8, 0.95, 0.9, 0.3])
    margin, means = best_margin(pairs, candidates=[-0.1, 0.0, 0.1, 0.3])
    assert margin == 0.1 and means[0.1] == pytest.approx((0.9 + 0.95 + 0.9 + 0.4) / 4)
    assert means[0.3] == pytest.approx(pairs.true_quality.mean())
    off = _pairs([0.05, 0.1, 0.3, 0.8, 0.9], [0.0, 0.02, 0.7, 0.8, 0.9], [0] * 5, [0] * 5)
    lost, rates = lost_threshold(off, candidates=[0.08, 0.2, 0.5])
    assert lost == 0.2 and rates[0.2] == (1.0, 0.0) and rates[0.5][1] == pytest.approx(1 / 3)


def test_figures_of_a_perfect_estimate():
    rng = np.random.default_rng(1)
    tq, tb = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300)
    f = figures(_pairs(tq, tq, tb, tb))
    assert f["spearman_quality"] == pytest.approx(1.0) and f["ece_quality"] == pytest.approx(0.0)
    assert f["auroc_base_better"] == pytest.approx(1.0) and f["n"] == 300


def test_suite_pairs_and_the_calibration_png_on_a_tiny_suite(tmp_path):
    from ar_ros.data.synthetic import Sequence
    from ar_ros.model import AlphaRefineNet, NetConfig
    torch.manual_seed(0)
    net = AlphaRefineNet(NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean",
                                   quality_head=True)).eval()
    seqs = [Sequence(100_000 + i, 6, (160, 120)) for i in range(2)]
    pairs = suite_pairs(net, seqs, base="jitter")
    assert 0 < len(pairs) <= 10
    for v in (pairs.pred_quality, pairs.true_quality, pairs.pred_base, pairs.true_base):
        assert ((v >= 0) & (v <= 1)).all()
    assert pairs.true_base.mean() > 0.3  # jittered GT overlaps the target
    png = calibration_figure({"tiny": pairs, "again": pairs}, tmp_path / "cal.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_best_margin_over_several_sets_weighs_each_set_the_same():
    # a right base box (oracle-like, 1 pair) gains 0.2 by keeping it at margin 0; the coarse set (3 pairs)
    # loses 0.15 of its mean by the same margin: one mean per set, so margin 0 wins; pooled, it loses
    right = _pairs([0.8], [0.8], [0.82], [1.0])
    coarse = _pairs([0.8, 0.8, 0.8], [0.8, 0.8, 0.8], [0.82, 0.82, 0.7], [0.5, 0.65, 0.5])
    margin, means = best_margin([right, coarse], candidates=[0.0, 0.05])
    assert margin == 0.0 and means[0.0] == pytest.approx((1.0 + (0.5 + 0.65 + 0.8) / 3) / 2)
    assert means[0.05] == pytest.approx(0.8)
    pooled, _ = best_margin(QualityPairs.concat([right, coarse]), candidates=[0.0, 0.05])
    assert pooled == 0.05  # pooled, the three coarse pairs outweigh the one right box


def test_keep_rules_on_hand_made_pairs():
    from ar_ros.eval.calibration import chosen_iou, keeps_base, rule_means, rule_table
    # pair 0: boxes agree, base better, head agrees; pair 1: boxes agree, refined better, head says so;
    # pair 2: boxes apart, head wrongly prefers the base box by 0.03
    pairs = QualityPairs(np.array([0.8, 0.9, 0.6]), np.array([0.85, 0.9, 0.7]), np.array([0.9, 0.8, 0.63]),
                         np.array([0.95, 0.85, 0.3]), np.array([0.9, 0.9, 0.4]))
    assert keeps_base(pairs, keep_iou=0.85).tolist() == [True, True, False]
    assert keeps_base(pairs, keep_iou=0.85, veto=0.0).tolist() == [True, False, False]
    assert keeps_base(pairs, margin=0.02).tolist() == [True, False, True]
    assert keeps_base(pairs, margin=0.05, keep_iou=0.85, veto=0.0).tolist() == [True, False, False]
    assert chosen_iou(pairs) == pytest.approx((0.85 + 0.9 + 0.7) / 3)
    assert chosen_iou(pairs, keep_iou=0.85, veto=0.0) == pytest.approx((0.95 + 0.9 + 0.7) / 3)
    table = rule_table({"hand-made": pairs, "no agreement": _pairs([0.5], [0.5], [0.5], [0.5])})
    assert "[0] hand-made" in table and "no agreement" not in table
    row = next(line for line in table.splitlines() if line.startswith("keep_iou 0.85, head veto +0.00"))
    assert row.split()[-3:] == ["0.8500", "+0.0167", "+0.0167"]  # vs keep_iou 0.85 alone: 0.8333
    means = rule_means({"hand-made": pairs, "no agreement": _pairs([0.5], [0.5], [0.5], [0.5])})
    assert means["keep_iou 0.85, head veto +0.00"] == {"hand-made": pytest.approx(0.85)}  # what --json carries
    with pytest.raises(ValueError, match="agreement"):
        keeps_base(_pairs([0.5], [0.5], [0.5], [0.5]), keep_iou=0.85)
    joined = QualityPairs.concat([pairs, pairs])
    assert joined.agreement is not None and len(joined.agreement) == 6
    assert QualityPairs.concat([pairs, _pairs([0.5], [0.5], [0.5], [0.5])]).agreement is None
