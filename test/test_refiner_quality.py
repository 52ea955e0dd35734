"""The Refiner's use of a quality head: score = predicted IoU, base box kept when predicted better, lost
after lost_frames low frames, reset by set_target; keep_iou where there is no head."""
import math

import pytest
import torch

from ar_ros import Refiner
from ar_ros.model import AlphaRefineNet

BOX = (200.0, 150.0, 120.0, 90.0)


def quality_net(quality: float, base_quality: float) -> AlphaRefineNet:
    """The shipped network (plausible boxes) with a new quality head that always predicts these two values (its
    last layer's bias; the calibration map the identity)."""
    import dataclasses
    from ar_ros.backends.factory import DEFAULT_CHECKPOINT
    from ar_ros.model import load_network
    shipped = load_network(DEFAULT_CHECKPOINT)[0]
    torch.manual_seed(0)
    net = AlphaRefineNet(dataclasses.replace(shipped.config, quality_head=True)).eval()
    net.load_state_dict({k: v for k, v in shipped.state_dict().items() if not k.startswith("quality_head.")},
                        strict=False)
    last = net.quality_head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.log(quality / (1 - quality)), math.log(base_quality / (1 - base_quality))]))
    return net


def test_score_is_the_predicted_iou_and_a_better_base_box_is_kept(frame):
    r = Refiner(quality_net(0.6, 0.9), quality_margin=0.05, keep_iou=0.0)
    first = r.set_target(frame, BOX, "a")
    assert first.score == pytest.approx(0.6, abs=1e-4) and first.base_quality == pytest.approx(0.9, abs=1e-4)
    assert first.kept and first.reason == "base better" and first.box == BOX and not first.fallback
    r.quality_margin = 0.5  # live: 0.9 < 0.6 + 0.5, the refined box goes out
    res = r.refine(frame, {"a": BOX})["a"]
    assert not res.kept and res.box == res.raw_box and res.reason == ""


def test_lost_after_lost_frames_low_frames_and_reset_by_set_target(frame):
    r = Refiner(quality_net(0.1, 0.05), lost_quality=0.25, lost_frames=3)
    r.set_target(frame, BOX, "a")  # the first refinement counts: one low frame
    flags = [r.refine(frame, {"a": BOX})["a"].lost for _ in range(3)]
    assert flags == [False, True, True]
    r.set_target(frame, BOX, "a")  # a new box: the count starts again (its own refinement is frame 1)
    assert r.refine(frame, {"a": BOX})["a"].lost is False


def test_without_a_head_keep_iou_decides_and_no_quality_is_reported(frame, shipped_without_head):
    r = Refiner(shipped_without_head, keep_iou=1e-6)  # no head: any overlap keeps the base box
    res = r.set_target(frame, BOX, "a")
    assert res.base_quality is None and res.lost is False
    assert res.kept and res.box == BOX and res.reason == ""


def test_cpu_graphs_and_fp16_carry_the_head(frame):
    """The tuned CPU path (packed layers, oneDNN graphs) and fp16 give the eager head's numbers."""
    net = quality_net(0.6, 0.9)
    torch.manual_seed(3)
    torch.nn.init.normal_(net.quality_head.mlp[-1].weight, std=0.05)  # the output depends on the input
    eager = Refiner(net, cpu_graphs=False, fold_batchnorm=False).set_target(frame, BOX, "a")
    graphed = Refiner(net)
    graphed.warm_up(1)
    fast = graphed.set_target(frame, BOX, "a")
    assert graphed.graphs is not None and graphed.graphs.sizes == [1], graphed.graphs.failure  # the head compiles
    half = Refiner(net, precision="fp16").set_target(frame, BOX, "a")
    for got, tol in ((fast, 1e-4), (half, 2e-2)):
        assert got.score == pytest.approx(eager.score, abs=tol)
        assert got.base_quality == pytest.approx(eager.base_quality, abs=tol)
    assert abs(eager.score - 0.6) > 1e-3  # the head's input reached its output
