"""The stride-8 corner head (``NetConfig.corner_stride=8``): coordinates, a zero start that scores what
the coarse head scores, checkpoints, the engine, ONNX and bf16."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ar_ros import Refiner
from ar_ros.backends.torch_cpu import bf16 as bf16_module, cpu, packing
from ar_ros.model import AlphaRefineNet, NetConfig, load_checkpoint, load_network, save_checkpoint
from ar_ros.model.heads import soft_argmax
from test_fuse import _randomise_bn

COARSE = NetConfig(input_size=128, with_top=False, crop_mode="clean", backbone="mobilenet_v2")
FINE = dataclasses.replace(COARSE, corner_stride=8)


def _nets():
    """A coarse network with trained-like BatchNorm and a fine one started from all its tensors."""
    torch.manual_seed(0)
    coarse = _randomise_bn(AlphaRefineNet(COARSE)).eval()
    fine = AlphaRefineNet(FINE).eval()
    missing, unexpected = fine.load_state_dict(coarse.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("corner_head.fine_") for k in missing)
    return coarse, _randomise_bn_of_fine(fine)


def _randomise_bn_of_fine(net):
    for name in ("fine_tl", "fine_br"):
        _randomise_bn(getattr(net.corner_head, name))
    return net


def test_config_takes_8_or_16_and_old_checkpoints_mean_16(tmp_path):
    with pytest.raises(ValueError, match="corner_stride must be 8 or 16"):
        dataclasses.replace(COARSE, corner_stride=4)
    assert NetConfig.from_dict({k: v for k, v in COARSE.to_dict().items() if k != "corner_stride"}).corner_stride == 16
    # a network without the newer parts writes the config older ar_ros versions read (and key their verdicts by)
    assert not {"corner_stride", "mask_head"} & set(COARSE.to_dict())
    assert FINE.to_dict()["corner_stride"] == 8 and NetConfig.from_dict(FINE.to_dict()) == FINE
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "fine.pt", AlphaRefineNet(FINE))
    net, _ = load_network(path)
    assert net.config.corner_stride == 8 and hasattr(net.corner_head, "fine_tl")
    state, config, _ = load_checkpoint(path)
    assert config == FINE and "corner_head.fine_br.out.weight" in state


def test_fine_soft_argmax_coordinates_sit_on_the_coarse_grid():
    """A one-hot fine cell j is at j x 8 - 4 px: a coarse peak, upsampled 2x, scores the coarse cell's corner."""
    score = torch.full((1, 1, 16, 16), -1e4)
    score[0, 0, 5, 9] = 0.0
    x, y, _ = soft_argmax(score, stride=8, offset=-4)
    assert (float(x), float(y)) == (9 * 8 - 4, 5 * 8 - 4)
    coarse = torch.full((1, 1, 8, 8), -30.0)
    coarse[0, 0, 3, 6] = 0.0
    cx, cy, _ = soft_argmax(coarse, stride=16)
    up = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    fx, fy, _ = soft_argmax(up, stride=8, offset=-4)
    assert abs(float(fx) - float(cx)) < 1e-3 and abs(float(fy) - float(cy)) < 1e-3


def test_zero_started_fine_head_scores_the_upsampled_coarse_map():
    coarse, fine = _nets()
    x, t = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        feats = fine.feature_extractor(x, ("layer2", "layer3"))
        fused = fine.neck(fine.template(t), feats["layer3"])
        head = fine.corner_head
        for corner in ("tl", "br"):
            want = F.interpolate(coarse.corner_head._tower(fused, corner, None), size=(16, 16), mode="bilinear",
                                 align_corners=False)
            assert torch.equal(head._tower(fused, corner, feats["layer2"]), want)
        a, b = coarse(t, x, with_mask=False), fine(t, x, with_mask=False)
    # the softmax of a smoother map: close to (within a quarter coarse cell), not equal to, the coarse one
    assert (a["boxes"] - b["boxes"]).abs().max() < 4.0
    with pytest.raises(ValueError, match="stride-8 map"):
        head(fused)


def test_a_trained_fine_correction_moves_the_boxes_and_the_engine_refines_with_it(tmp_path, frame):
    _, fine = _nets()
    with torch.no_grad():
        for name in ("fine_tl", "fine_br"):
            torch.nn.init.normal_(getattr(fine.corner_head, name).out.weight, std=0.5)
    x, t = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        moved = fine(t, x, with_mask=False)["boxes"]
        zero = copy.deepcopy(fine)
        for name in ("fine_tl", "fine_br"):
            getattr(zero.corner_head, name).out.weight.zero_()
        assert (moved - zero(t, x, with_mask=False)["boxes"]).abs().max() > 0.1  # the stride-8 map is used
        masked = fine(t, x, with_mask=True)
    assert torch.equal(masked["boxes"], moved) and masked["mask"].shape == (1, 1, 128, 128)
    path = save_checkpoint(tmp_path / "fine.pt", fine)
    refiner = Refiner(str(path), box_mode="fused")
    box = (200.0, 150.0, 120.0, 90.0)
    refiner.set_targets(frame, {"a": box})
    result = refiner.refine(frame, {"a": box}, mask=True)["a"]
    assert np.isfinite(result.raw_box).all() and result.mask.shape == frame.shape[:2]


def test_fine_head_exports_to_onnx_and_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from ar_ros.backends.onnx_export import export_onnx, max_box_difference
    _, fine = _nets()
    export_onnx(fine, tmp_path / "onnx")
    assert max_box_difference(fine, tmp_path / "onnx") < 0.05


def test_merged_towers_of_a_fine_head_give_the_separate_towers_boxes():
    """fp32 packing merges the two towers, stride-8 branches included (engine.packing._MergedCornerHead)."""
    from ar_ros.model.fuse import fold_batchnorm
    _, fine = _nets()
    with torch.no_grad():
        for name in ("fine_tl", "fine_br"):  # a trained-like correction, not the zero start
            torch.nn.init.normal_(getattr(fine.corner_head, name).out.weight, std=0.5)
    net = copy.deepcopy(fine)
    fold_batchnorm(net)
    merged = packing._MergedCornerHead(net.corner_head)
    x, t = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        feats = net.feature_extractor(x, ("layer2", "layer3"))
        fused = net.neck(net.template(t), feats["layer3"])
        want, got = net.corner_head(fused, feats["layer2"]), merged(fused, feats["layer2"])
        assert torch.allclose(got["boxes"], want["boxes"], atol=1e-4)
        assert torch.allclose(got["score"], want["score"], atol=1e-5)
        with pytest.raises(ValueError, match="stride-8 map"):
            merged(fused)
    if packing._pointwise_ops():
        packed = packing.pack_fp32(copy.deepcopy(net).to(memory_format=torch.channels_last))
        assert isinstance(packed.corner_head, packing._MergedCornerHead)
        to = dict(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = packed.search(x.to(**to), packed.template(t.to(**to)))
        assert torch.allclose(out["boxes"], fine(t, x, with_mask=False)["boxes"], atol=1e-3)


@pytest.mark.skipif(not cpu.cpu_bf16_units(), reason="this CPU has no bf16 units")
def test_bf16_merges_the_fine_towers_and_keeps_their_score_convolutions_in_fp32():
    from ar_ros.model.fuse import fold_batchnorm
    _, fine = _nets()
    net = copy.deepcopy(fine)
    fold_batchnorm(net)
    bf16 = bf16_module.to_bf16(net.to(memory_format=torch.channels_last))
    head = bf16.corner_head
    assert isinstance(head, packing._MergedCornerHead)
    assert all(isinstance(getattr(head, n), packing._Float32) for n in ("score", "fine_out"))
    x, t = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        want = fine(t, x, with_mask=False)["boxes"]
        to = dict(dtype=torch.bfloat16, memory_format=torch.channels_last)
        got = bf16.search(x.to(**to), bf16.template(t.to(**to)))["boxes"].float()
    assert (got - want).abs().max() < 3.0
