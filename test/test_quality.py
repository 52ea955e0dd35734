"""The quality head: a separate branch that leaves boxes and masks bit-identical, loads and saves with the
checkpoint, exports to ONNX, trains alone on frozen weights; and the engine's decision rule on it."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ar_ros.engine.quality import (BASE_BETTER, LOST_FRAMES, LOST_QUALITY, QUALITY_MARGIN, RESEED_BELOW, LostState,
                                   check_quality_params, choose, trusted)
from ar_ros.model import AlphaRefineNet, NetConfig, load_checkpoint, load_network, save_checkpoint
from ar_ros.options import DEFAULTS
from ar_ros.model.network import SearchTensors
from ar_ros.model.quality import CALIBRATION_KNOTS, QualityHead, base_box
from ar_ros.train.quality import quality_network

SHIPPED = Path(__file__).resolve().parent.parent / "ar_ros" / "weights" / "ar_ros_default.pt"


def _pair(config: NetConfig, seed: int = 0):
    """The same network without and with a quality head (head weights random, not zero)."""
    torch.manual_seed(seed)
    plain = AlphaRefineNet(config).eval()
    headed = AlphaRefineNet(NetConfig(**{**config.__dict__, "quality_head": True})).eval()
    missing = headed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("quality_head.") for k in missing)
    return plain, headed


def _inputs(net: AlphaRefineNet, batch: int = 3, seed: int = 1):
    torch.manual_seed(seed)
    size = net.config.input_size
    with torch.no_grad():
        images = torch.randn(batch, 3, size, size)
        return images, net.template(torch.randn(batch, 3, size, size))


def _assert_same_box_and_mask(plain: AlphaRefineNet, headed: AlphaRefineNet) -> dict:
    images, kernels = _inputs(plain)
    with torch.no_grad():
        for kwargs in ({}, {"with_mask": True}, {"with_mask": True, "mask_logits": True}):
            a, b = plain.search(images, kernels, **kwargs), headed.search(images, kernels, **kwargs)
            assert set(b) - set(a) == {"quality", "base_quality"}
            for key in a:
                assert torch.equal(a[key], b[key]), (key, kwargs)
    return b


@pytest.mark.parametrize("config", [
    NetConfig(depth=18, input_size=128, with_top=False, crop_mode="clean"),
    NetConfig(backbone="mobilenet_v2", input_size=64, crop_mode="clean", corner_stride=8, mask_head="slim")])
def test_head_leaves_boxes_and_masks_bit_identical_and_predicts_ious_in_0_1(config):
    plain, headed = _pair(config)
    out = _assert_same_box_and_mask(plain, headed)
    for key in ("quality", "base_quality"):
        assert out[key].shape == (3,) and bool(((out[key] >= 0) & (out[key] <= 1)).all())
    assert plain.quality_head is None


def test_shipped_weights_give_the_same_boxes_with_and_without_a_head():
    """The shipped default (with its head, or without one) and the same weights built without a head."""
    from dataclasses import replace
    from ar_ros.model.checkpoint import build_network
    state, config, _ = load_checkpoint(SHIPPED)
    plain = build_network({k: v for k, v in state.items() if not k.startswith("quality_head.")},
                          replace(config, quality_head=False))
    headed = load_network(SHIPPED)[0] if config.quality_head else quality_network(str(SHIPPED))
    _assert_same_box_and_mask(plain, headed)


def test_merging_a_head_keeps_every_stored_tensor_and_refuses_a_head_of_other_weights(tmp_path):
    from ar_ros.model.checkpoint import CheckpointError, merge_quality_head
    config = NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean")
    plain, headed = _pair(config, seed=4)
    save_checkpoint(tmp_path / "base.pt", plain, half=True, meta={"note": "base"})
    head_net = quality_network(str(tmp_path / "base.pt"))
    torch.nn.init.normal_(head_net.quality_head.mlp[2].weight)
    save_checkpoint(tmp_path / "head.pt", head_net)
    out = merge_quality_head(tmp_path / "base.pt", tmp_path / "head.pt", tmp_path / "merged.pt", {"q": 1})
    base_state, _, _ = load_checkpoint(tmp_path / "base.pt")
    merged, merged_config, meta = load_checkpoint(out)
    assert merged_config.quality_head and meta == {"note": "base", "q": 1}
    for key, value in base_state.items():
        assert merged[key].dtype == value.dtype and torch.equal(merged[key], value), key
    head_keys = [k for k in merged if k.startswith("quality_head.")]
    assert head_keys and all(torch.equal(merged[k], head_net.state_dict()[k]) for k in head_keys)
    _assert_same_box_and_mask(load_network(tmp_path / "base.pt")[0], load_network(out)[0])
    save_checkpoint(tmp_path / "other.pt", headed)  # a head on other (unrounded fp32) weights
    with pytest.raises(CheckpointError, match="other weights"):
        merge_quality_head(tmp_path / "base.pt", tmp_path / "other.pt", tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no quality head"):
        merge_quality_head(tmp_path / "base.pt", tmp_path / "base.pt", tmp_path / "bad.pt")


def test_config_without_a_head_is_unchanged_and_a_headed_checkpoint_round_trips(tmp_path):
    config = NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean")
    assert "quality_head" not in config.to_dict()
    _, headed = _pair(config, seed=3)
    assert headed.config.to_dict()["quality_head"] is True
    save_checkpoint(tmp_path / "q.pt", headed)
    loaded, _ = load_network(tmp_path / "q.pt")
    assert loaded.config.quality_head and loaded.quality_head is not None
    images, kernels = _inputs(headed)
    with torch.no_grad():
        a, b = headed.search(images, kernels), loaded.search(images, kernels)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_base_box_is_the_centre_of_the_crop_at_one_over_the_search_factor():
    assert base_box(128, 2.0).tolist() == [32.0, 32.0, 96.0, 96.0]
    from ar_ros.engine.crop import window_for
    win = window_for((40.0, 30.0, 50.0, 20.0), 2.0, 128, "clean")
    assert np.allclose(win.box_to_crop((40.0, 30.0, 50.0, 20.0)), base_box(128, 2.0).numpy())


def test_calibration_map_is_applied_piecewise_linearly_and_checked():
    torch.manual_seed(0)
    head = QualityHead(in_channels=8, input_size=64).eval()
    fused, boxes, score = torch.randn(5, 8, 4, 4), torch.tensor([[10.0, 12.0, 40.0, 50.0]] * 5), torch.rand(5)
    corner_prob = torch.softmax(torch.randn(5, 2, 16), dim=-1).reshape(5, 2, 4, 4)
    with torch.no_grad():
        raw = torch.sigmoid(head.raw(fused, boxes, score, corner_prob))
        identity = head(fused, boxes, score, corner_prob)
    assert torch.allclose(identity["quality"], raw[:, 0], atol=1e-6)
    knots = np.linspace(0, 1, CALIBRATION_KNOTS)
    values = np.stack((knots ** 2, np.sqrt(knots)))
    head.set_calibration(np.stack((knots, knots)), values)
    with torch.no_grad():
        out = head(fused, boxes, score, corner_prob)
    want_q = np.interp(raw[:, 0].numpy(), knots, values[0])
    want_b = np.interp(raw[:, 1].numpy(), knots, values[1])
    assert np.allclose(out["quality"].numpy(), want_q, atol=1e-5)
    assert np.allclose(out["base_quality"].numpy(), want_b, atol=1e-5)
    with pytest.raises(ValueError, match="must not decrease"):
        head.set_calibration(np.stack((knots, knots)), values[:, ::-1].copy())
    with pytest.raises(ValueError, match="knots and values"):
        head.set_calibration(knots[None], values[:1])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        head.set_calibration(np.stack((knots, knots)), values * 1.5)


def test_the_heads_derived_layers_follow_its_stored_weights_and_let_gradients_through():
    # QualityHead.derived keeps the folded first layer and the calibration's layers between inference calls:
    # new weights (load_state_dict, an in-place step) must reach the output, and training must reach them
    torch.manual_seed(0)
    head, other = QualityHead(in_channels=8, input_size=64).eval(), QualityHead(in_channels=8, input_size=64).eval()
    inputs = (torch.randn(3, 8, 4, 4), torch.tensor([[10.0, 12.0, 40.0, 50.0]] * 3), torch.rand(3),
              torch.softmax(torch.randn(3, 2, 16), dim=-1).reshape(3, 2, 4, 4))
    with torch.no_grad():
        before = head.raw(*inputs)
        head.load_state_dict(other.state_dict())
        after, want = head.raw(*inputs), other.raw(*inputs)
    assert not torch.allclose(before, after) and torch.equal(after, want)
    with torch.no_grad():
        head.mlp[0].weight.add_(0.05)
        other.mlp[0].weight.add_(0.05)
        stepped, want = head.raw(*inputs), other.raw(*inputs)
    assert not torch.allclose(stepped, after) and torch.equal(stepped, want)
    head.raw(*inputs).sum().backward()  # autograd on: computed afresh from the stored weights
    assert head.mlp[0].weight.grad is not None and float(head.mlp[0].weight.grad.abs().sum()) > 0


def test_search_tensors_carry_the_quality_outputs_and_export_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import inspect
    import warnings
    _, headed = _pair(NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean"), seed=5)
    module = SearchTensors(headed, with_mask=True, mask_logits=True).eval()
    assert module.output_names == ("boxes", "score", "mask_logits", "quality", "base_quality")
    assert SearchTensors(AlphaRefineNet(NetConfig(depth=18, input_size=64, with_top=False)), False).output_names \
        == ("boxes", "score")
    images, kernels = _inputs(headed, batch=2)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    path = tmp_path / "search.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (images, kernels), str(path), input_names=["images", "kernels"],
                          output_names=list(module.output_names), opset_version=17, **legacy)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy(), "kernels": kernels.numpy()})
    with torch.no_grad():
        want = module(images, kernels)
    for name, a, b in zip(module.output_names, got, want):
        assert np.allclose(a, b.numpy(), atol=1e-4), name


def test_far_base_boxes_miss_the_target_and_carry_the_unclipped_truth():
    from ar_ros.train.losses import box_iou_xyxy
    from ar_ros.train.sampler import PairSampler, SamplerConfig, synthetic_pairs
    sampler = PairSampler(synthetic_pairs(size=(160, 120)), SamplerConfig(input_size=64, far_prob=1.0,
                                                                          far_distance=(2.0, 3.0)))
    batch = sampler.batch(np.random.default_rng(0), 8)
    # a base box 2-3 target sizes away (less where the frame's edge stops it) mostly misses the target
    assert float((box_iou_xyxy(batch["base"], batch["truth"]) < 0.05).float().mean()) >= 0.75
    assert torch.equal(batch["target"], batch["truth"].clamp(0, 64))


def test_nearly_right_base_boxes_range_from_the_exact_box_to_a_few_percent_off():
    from ar_ros.train.losses import box_iou_xyxy
    from ar_ros.train.sampler import PairSampler, SamplerConfig, synthetic_pairs
    sampler = PairSampler(synthetic_pairs(size=(160, 120)), SamplerConfig(input_size=64, small_jitter_prob=1.0))
    batch = sampler.batch(np.random.default_rng(1), 32)
    iou = box_iou_xyxy(batch["base"], batch["truth"])
    assert float(iou.min()) > 0.85 and float(iou.max()) > 0.99  # some all but exact: a right box stays right
    assert float((iou < 0.97).float().mean()) > 0.1             # others a few percent off


def test_tracker_pairs_take_the_trackers_box_as_the_base_box():
    from ar_ros.data.base_trackers import run_opencv
    from ar_ros.data.synthetic import cached_sequence
    from ar_ros.train.sampler import PairSampler, SamplerConfig, tracker_pairs
    source = tracker_pairs("kcf", seed_range=(100, 101), n_sequences=1, length=12, size=(160, 120), max_gap=3)
    _, search = source(np.random.default_rng(0))
    seq = cached_sequence(100, 12, 160, 120)
    boxes = run_opencv((seq[t].image for t in range(12)), seq[0].box, "kcf")
    frame = next(t for t in range(12) if np.array_equal(seq[t].image, search.image))
    assert search.box == seq[frame].box and search.base == tuple(boxes[frame])
    # the sampler crops about the tracker's box, whatever its jitter settings say
    sampler = PairSampler(lambda rng: source(np.random.default_rng(0)), SamplerConfig(input_size=64,
                                                                                       small_jitter_prob=1.0))
    item = sampler.sample(np.random.default_rng(5))
    from ar_ros.engine.crop import window_for
    want = window_for(search.base, 2.0, 64, "clean").box_to_crop(search.base)
    assert np.allclose(item["base"].numpy(), want, atol=1e-4)


def test_quality_only_training_changes_the_head_alone(tmp_path):
    from ar_ros.train.trainer import TrainConfig, train
    torch.manual_seed(2)
    source = AlphaRefineNet(NetConfig(depth=18, input_size=64, with_top=False, crop_mode="clean"))
    save_checkpoint(tmp_path / "start.pt", source)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=1, iters_per_epoch=2, batch_size=4, val_batches=1,
                      frame_size=[160, 120], init_from=str(tmp_path / "start.pt"), quality_only=True,
                      small_jitter_prob=0.3, far_prob=0.3, quality_pairs=6)
    state, config, meta = load_checkpoint(train(cfg, progress=False))
    # the network ran once over the pairs; what the head saw is kept for a resumed run: 6 of 2 batches of 4
    cached = torch.load(tmp_path / "run" / "pairs" / "part0000.pt", weights_only=True)
    assert [len(column) for column in cached] == [8] * len(cached) and cached[-1].shape == (8, 2)
    assert config.quality_head and config.input_size == 64
    want = source.state_dict()
    for key, value in want.items():
        assert torch.equal(state[key], value), key
    head = {k: v for k, v in state.items() if k.startswith("quality_head.")}
    assert head and "val_loss" in meta["history"][0] and "val_mae_quality" in meta["history"][0]
    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(quality_only=True)
    with pytest.raises(ValueError, match="far_prob"):
        TrainConfig(small_jitter_prob=0.8, far_prob=0.3)


def test_choose_keeps_the_base_box_only_when_it_is_better_by_the_margin():
    assert choose(0.5, 0.875, margin=0.25) == (True, BASE_BETTER)
    assert choose(0.5, 0.75, margin=0.25) == (True, BASE_BETTER)  # at the margin: the base box
    assert choose(0.5, 0.625, margin=0.25) == (False, "")
    assert choose(0.30, 0.10, margin=0.0) == (False, "")
    assert choose(0.5, 0.5, margin=0.0) == (True, BASE_BETTER)
    assert choose(0.9, 0.2) == (False, "") and -1 < QUALITY_MARGIN < 1
    assert choose(0.0, 1.0, margin=1.0) == (False, "")  # 1: the gate off, whatever the predictions


def test_lost_after_n_low_frames_cleared_by_a_good_frame_and_by_reset():
    state = LostState(lost_quality=0.3, lost_frames=3)
    assert [state.update(q) for q in (0.1, 0.2, 0.29)] == [False, False, True]
    assert state.update(0.05) and state.lost
    assert not state.update(0.3)  # at the threshold: not low
    assert [state.update(q) for q in (0.1, 0.1)] == [False, False]
    state.reset()
    assert not state.update(0.1) and not state.update(0.1) and state.update(0.1)
    default = LostState()
    assert (default.lost_quality, default.lost_frames) == (LOST_QUALITY, LOST_FRAMES)


def test_quality_parameters_are_checked_with_their_names():
    with pytest.raises(ValueError, match="lost_frames"):
        LostState(lost_frames=0)
    with pytest.raises(ValueError, match="lost_quality"):
        LostState(lost_quality=1.5)
    with pytest.raises(ValueError, match="quality_margin"):
        check_quality_params(2.0, 0.2, 3)
    check_quality_params(-0.1, 0.0, 1)


def test_trusted_means_not_lost_not_kept_not_fallback():
    from types import SimpleNamespace as R
    assert trusted(R(kept=False, fallback=False, lost=False))
    assert trusted(R(kept=False, fallback=False))  # a result type without the lost flag
    assert not trusted(R(kept=True, fallback=False, lost=False))
    assert not trusted(R(kept=False, fallback=True, lost=False))
    assert not trusted(R(kept=False, fallback=False, lost=True))


def test_trusted_boxes_are_fed_back_only_where_the_base_box_is_predicted_off():
    from types import SimpleNamespace as R
    ok = dict(kept=False, fallback=False, lost=False)
    assert RESEED_BELOW == DEFAULTS["reseed_below"]
    assert trusted(R(**ok, base_quality=0.2), reseed_below=0.5)
    assert not trusted(R(**ok, base_quality=0.5), reseed_below=0.5)  # at the threshold: the tracker is right
    assert not trusted(R(**ok, base_quality=0.9), reseed_below=0.5)
    assert trusted(R(**ok, base_quality=0.9), reseed_below=1.0)  # 1: every trusted box
    assert trusted(R(**ok, base_quality=1.0), reseed_below=1.0)
    assert trusted(R(**ok, base_quality=None), reseed_below=0.0)  # no head: every trusted box
    assert trusted(R(**ok, base_quality=-1.0), reseed_below=0.0)  # refined/targets without a head
    assert not trusted(R(kept=True, fallback=False, lost=False, base_quality=0.1), reseed_below=0.5)
    with pytest.raises(ValueError, match="reseed_below"):
        check_quality_params(0.0, 0.3, 3, reseed_below=1.5)
