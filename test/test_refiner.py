"""The engine: batching, determinism, colour order, masks, the plausibility gate and bad input."""
import math

import numpy as np
import pytest
import torch

from ar_ros import Refiner, Result
from ar_ros.model import AlphaRefineNet, CheckpointError

BOX = (200.0, 150.0, 120.0, 90.0)


@pytest.fixture
def refiner(small_net):
    return Refiner(small_net)


def test_refine_returns_results_in_frame_pixels(refiner, frame):
    refiner.set_target(frame, BOX, "a")
    out = refiner.refine(frame, {"a": (205.0, 145.0, 110.0, 100.0)})
    assert set(out) == {"a"}
    res = out["a"]
    assert isinstance(res, Result) and len(res.box) == 4 and 0.0 <= res.score <= 1.0
    assert res.raw_box is not None and all(math.isfinite(v) for v in res.raw_box)
    assert res.base_box == (205.0, 145.0, 110.0, 100.0)
    assert res.mask is None
    assert refiner.passes == 1 and refiner.last_batch_size == 1


@pytest.mark.parametrize("mode", ["clean", "exact"])
def test_batch_equals_single_calls(small_net, frame, mode):
    r = Refiner(small_net, crop_mode=mode)
    boxes = {"a": BOX, "b": (10.0, 20.0, 60.0, 40.0), "c": (600.0, 400.0, 80.0, 120.0), 7: (300.5, 10.25, 33.0, 21.0)}
    r.set_targets(frame, boxes)
    moved = {k: (b[0] + 3, b[1] - 2, b[2] * 1.1, b[3] * 0.9) for k, b in boxes.items()}
    batched = r.refine(frame, moved, mask=True)
    assert r.last_batch_size == 4
    for k, b in moved.items():
        single = Refiner(small_net, crop_mode=mode)
        single.set_target(frame, boxes[k], k)
        one = single.refine(frame, {k: b}, mask=True)[k]
        assert np.allclose(one.raw_box, batched[k].raw_box, atol=1e-3)
        assert one.score == pytest.approx(batched[k].score, abs=1e-5)
        assert np.abs(one.mask - batched[k].mask).max() < 1e-4


def test_more_targets_than_max_batch_run_in_several_passes_with_the_same_results(small_net, frame):
    boxes = {i: (20.0 + 90 * i, 40.0 + 30 * i, 60.0 + 5 * i, 50.0) for i in range(5)}
    one_pass, split = Refiner(small_net), Refiner(small_net, max_batch=2)
    for r in (one_pass, split):
        r.set_targets(frame, boxes)  # templates in passes of 2 as well
    a, b = one_pass.refine(frame, boxes, mask=True), split.refine(frame, boxes, mask=True)
    assert (one_pass.passes, split.passes) == (1, 3) and split.last_batch_size == 5
    for i in boxes:
        assert np.allclose(a[i].raw_box, b[i].raw_box, atol=1e-3)
        assert np.abs(a[i].mask - b[i].mask).max() < 1e-4
    with pytest.raises(ValueError, match="max_batch"):
        Refiner(small_net, max_batch=0)


def test_fp32_is_deterministic(refiner, frame):
    refiner.set_target(frame, BOX, "a")
    first = refiner.refine(frame, {"a": BOX}, mask=True)["a"]
    second = refiner.refine(frame, {"a": BOX}, mask=True)["a"]
    assert first.raw_box == second.raw_box and first.score == second.score
    assert np.array_equal(first.mask, second.mask)


def test_bgr_frames_give_the_same_answer_as_rgb(refiner, frame):
    refiner.set_target(frame, BOX, "a")
    rgb = refiner.refine(frame, {"a": BOX})["a"]
    bgr_ref = Refiner(refiner.net)
    bgr_ref.set_target(frame[..., ::-1].copy(), BOX, "a", color="bgr")
    bgr = bgr_ref.refine(frame[..., ::-1].copy(), {"a": BOX}, color="bgr")["a"]
    assert rgb.raw_box == pytest.approx(bgr.raw_box)
    # one pass over an RGB and a BGR frame (cameras with different encodings) gives the same answers
    both = refiner.refine_many([(frame, {"a": BOX}), (frame[..., ::-1].copy(), {"a": BOX}, "bgr")])
    assert both[0]["a"].raw_box == pytest.approx(rgb.raw_box, abs=1e-3)
    assert both[1]["a"].raw_box == pytest.approx(rgb.raw_box, abs=1e-3)
    with pytest.raises(ValueError, match="color"):
        refiner.refine_many([(frame, {"a": BOX}, "bgra")])


def test_mask_is_frame_sized_probabilities(refiner, frame):
    refiner.set_target(frame, BOX, "a")
    res = refiner.refine(frame, {"a": BOX}, mask=True)["a"]
    assert res.mask.shape == frame.shape[:2] and res.mask.dtype == np.float32
    assert 0.0 <= res.mask.min() and res.mask.max() <= 1.0
    # nothing outside the 2x search window
    assert not res.mask[:, :140].any() and not res.mask[:, 381:].any()


def test_bad_base_boxes_fall_back_with_a_reason(refiner, frame):
    refiner.set_targets(frame, {"nan": BOX, "neg": BOX, "out": BOX, "short": BOX, "ok": BOX})
    out = refiner.refine(frame, {"nan": (float("nan"), 1, 2, 3), "neg": (10, 10, -5, 10),
                                 "out": (5000, 10, 20, 20), "short": (1, 2, 3), "ok": BOX})
    for tid in ("nan", "neg", "out", "short"):
        assert out[tid].fallback and out[tid].score == 0.0 and out[tid].reason
    assert "NaN" in out["nan"].reason and "negative" in out["neg"].reason
    assert "outside" in out["out"].reason and "4 numbers" in out["short"].reason
    assert out["out"].box == (5000.0, 10.0, 20.0, 20.0)
    assert refiner.last_batch_size == 1  # only the good one went through the network


def test_plausibility_gate_rejects_collapsed_output(small_net, frame):
    net = AlphaRefineNet(small_net.config)
    net.load_state_dict(small_net.state_dict())
    with torch.no_grad():  # flat corner maps: both corners at the same point -> zero-size box
        net.corner_head.conv5_tl.weight.zero_()
        net.corner_head.conv5_br.weight.zero_()
    r = Refiner(net)
    r.set_target(frame, BOX, "a")
    res = r.refine(frame, {"a": BOX})["a"]
    assert res.fallback and "degenerate" in res.reason and res.box == BOX
    assert res.raw_box[2] == pytest.approx(0.0, abs=1e-3)


def test_gate_rules(refiner):
    base = (100.0, 100.0, 50.0, 40.0)
    check = refiner._implausible
    assert check(base, (101.0, 99.0, 48.0, 41.0), 0.5, 640, 480) == ""
    assert "not finite" in check(base, (float("nan"), 0, 1, 1), 0.5, 640, 480)
    assert "outside" in check(base, (700.0, 10.0, 50.0, 40.0), 0.5, 640, 480)
    assert "width changed" in check(base, (100.0, 100.0, 200.0, 40.0), 0.5, 640, 480)
    strict = Refiner(refiner.net, min_score=0.6)
    assert "below min_score" in strict._implausible(base, base, 0.5, 640, 480)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((480, 640, 3), np.float32), "uint8"),
    (np.zeros((480, 640), np.uint8), "HxWx3"),
    (np.zeros((480, 640, 4), np.uint8), "HxWx3"),
    ([[0, 1]], "numpy array"),
    (np.zeros((1, 1, 3), np.uint8), "too small"),
])
def test_bad_frames_raise_value_error(refiner, bad, match):
    with pytest.raises(ValueError, match=match):
        refiner.set_target(bad, BOX, "a")


def test_set_target_rejects_bad_boxes_and_unknown_ids_are_key_errors(refiner, frame):
    for box in [(float("nan"), 0, 10, 10), (0, 0, 0, 10), (-100, -100, 50, 50)]:
        with pytest.raises(ValueError):
            refiner.set_target(frame, box, "a")
    assert refiner.targets == []
    with pytest.raises(KeyError, match="set_target"):
        refiner.refine(frame, {"ghost": BOX})
    with pytest.raises(ValueError, match="color"):
        refiner.refine(frame, {}, color="hsv")


def test_clear_one_and_all(refiner, frame):
    refiner.set_targets(frame, {"a": BOX, "b": BOX})
    assert refiner.clear("a") is True
    assert refiner.targets == ["b"]
    assert refiner.clear("a") is False  # unknown: said, not raised
    refiner.clear()
    assert refiner.targets == []


def test_device_and_precision_errors(small_net):
    assert Refiner(small_net, device="cpu", precision="fp16").dtype == torch.float16  # fp16 on CPU: runs
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            Refiner(small_net, device="cuda")
    with pytest.raises(ValueError, match="unknown device"):
        Refiner(small_net, device="gpu7")
    with pytest.raises(ValueError, match="crop_mode"):
        Refiner(small_net, crop_mode="fancy")
    with pytest.raises(ValueError, match="cuda_graphs needs backend 'torch' on device 'cuda'"):
        Refiner(small_net, cuda_graphs=True)


def test_cuda_graphs_refuse_a_network_that_is_not_on_a_gpu(small_net):
    import copy
    from ar_ros.backends.base import BackendError
    from ar_ros.backends.cuda_graphs import CudaGraphsBackend
    with pytest.raises(BackendError, match="CUDA device"):
        CudaGraphsBackend(copy.deepcopy(small_net), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_replays_equal_eager_passes_for_every_batch_size(small_net, frame):
    boxes = {"a": (200.0, 150.0, 120.0, 90.0), "b": (20.0, 30.0, 60.0, 50.0), "c": (500.0, 300.0, 80.0, 90.0)}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # IEEE fp32: a graph may hold other cuDNN algorithms than eager
    eager = Refiner(small_net, device="cuda", precision="fp32")
    graphed = Refiner(small_net, device="cuda", precision="fp32", cuda_graphs=True)
    graphed.runner.warm_up([1, 2, 3], with_mask=True)  # every graph before the first frame
    for r in (eager, graphed):
        r.set_targets(frame, boxes)
    for n in (1, 3, 1, 2):  # a shape seen before replays its graph with new inputs
        subset = dict(list(boxes.items())[:n])
        shifted = {k: (x + 3.0 * n, y, w, h) for k, (x, y, w, h) in subset.items()}
        for mask in (False, True):
            a, b = eager.refine(frame, shifted, mask=mask), graphed.refine(frame, shifted, mask=mask)
            for tid in subset:
                assert np.allclose(a[tid].raw_box, b[tid].raw_box, atol=1e-3)
                if mask:
                    assert np.abs(a[tid].mask - b[tid].mask).max() < 1e-3  # masks come back in fp16
    from ar_ros.backends.cuda_graphs import graph_keys
    assert sorted(graphed.runner.captured, key=repr) == sorted(graph_keys([1, 2, 3], True, graphed.runner.sizes),
                                                               key=repr)
    assert graphed.runner.eager_calls == {}  # every call replayed a graph; none was captured during a frame
    torch.backends.cudnn.allow_tf32 = tf32


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Refiner(str(tmp_path / "missing.pt"))


def test_exact_mode_with_authors_layout_runs_on_256_crops(frame):
    torch.manual_seed(0)
    r = Refiner(AlphaRefineNet(), crop_mode="exact")
    assert r.input_size == 256 and r.crop_mode == "exact"
    r.set_target(frame, BOX, "a")
    res = r.refine(frame, {"a": BOX}, mask=True)["a"]
    assert res.mask.shape == (480, 640) and len(res.raw_box) == 4


def test_set_target_returns_its_box_refined_on_that_frame(refiner, frame):
    first = refiner.set_target(frame, BOX, "a")
    again = refiner.refine(frame, {"a": BOX})["a"]
    assert isinstance(first, Result) and first.base_box == tuple(float(v) for v in BOX)
    assert first.raw_box == again.raw_box and first.score == again.score
    assert refiner.passes == 1  # set_target's own pass is not a refine call's


def test_defaults_are_the_options_table(small_net):
    from ar_ros.options import DEFAULTS
    r = Refiner(small_net)
    assert r.keep_iou == DEFAULTS["keep_iou"] and r.box_mode == DEFAULTS["box_mode"]
    assert r.min_score == DEFAULTS["min_score"] and r.max_batch == DEFAULTS["max_batch"]
    assert r.device.type == ("cuda" if torch.cuda.is_available() else "cpu")  # device auto
