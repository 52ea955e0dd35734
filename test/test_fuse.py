"""BatchNorm folding: same outputs as the unfolded network, no BatchNorm left, caller's network untouched."""
import numpy as np
import pytest
import torch
from torch import nn

from ar_ros import Refiner
from ar_ros.model import AlphaRefineNet, NetConfig
from ar_ros.model.fuse import fold_batchnorm, fold_conv_bn


def _randomise_bn(net):
    """Non-trivial running statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return net


def test_fold_conv_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    for bias in (False, True):
        conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=bias), _randomise_bn(nn.BatchNorm2d(6)).eval()
        x = torch.randn(2, 4, 9, 9)
        want = bn(conv(x))
        fold_conv_bn(conv, bn)
        assert torch.allclose(conv(x), want, atol=1e-5)


@pytest.mark.parametrize("depth", [18, 50])
def test_fold_whole_network(depth):
    torch.manual_seed(0)
    net = _randomise_bn(AlphaRefineNet(NetConfig(depth=depth, input_size=128, with_top=False))).eval()
    template, search = torch.randn(1, 3, 128, 128), torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        kernel = net.template(template)
        want = net.search(search, kernel.expand(2, -1, -1), with_mask=True)
    count = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert fold_batchnorm(net) == count  # every BatchNorm of the refiner follows a convolution
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with torch.inference_mode():
        got = net.search(search, net.template(template).expand(2, -1, -1), with_mask=True)
    assert torch.allclose(got["boxes"], want["boxes"], atol=1e-3)
    assert torch.allclose(got["mask"], want["mask"], atol=1e-4)


def test_fold_refuses_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())


def test_refiner_folds_a_copy(small_net, frame):
    import copy
    small_net = copy.deepcopy(small_net)  # the session fixture is shared (e.g. with onnx_dir's export)
    _randomise_bn(small_net)
    refiner = Refiner(small_net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in refiner.net.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in small_net.modules())  # the caller's network is untouched
    box = (200.0, 150.0, 120.0, 90.0)
    refiner.set_target(frame, box, "a")
    got = refiner.refine(frame, {"a": (190.0, 160.0, 130.0, 80.0)})["a"]
    # the same refinement computed without folding
    from ar_ros.engine import crop as cropping
    win_t = cropping.window_for(box, refiner.search_factor, refiner.input_size, refiner.crop_mode)
    win_s = cropping.window_for((190.0, 160.0, 130.0, 80.0), refiner.search_factor, refiner.input_size,
                                refiner.crop_mode)
    with torch.inference_mode():
        kernel = small_net.template(refiner._crops(frame, [win_t], "rgb"))
        raw = small_net.search(refiner._crops(frame, [win_s], "rgb"), kernel)["boxes"][0].numpy()
    assert np.allclose(got.raw_box, win_s.box_to_frame(raw), atol=0.02)


@pytest.mark.parametrize("config", [dict(depth=18), dict(backbone="mobilenet_v2", mask_head="slim", corner_stride=8)],
                         ids=["resnet18", "mobilenet_v2-slim-fine"])
def test_fp32_packing_runs_every_convolution_in_onednn_with_the_same_boxes(config, frame):
    """The CPU fp32 path packs the convolutions (backends.torch_cpu.packing.pack_fp32): same boxes and masks as
    the folded network without packing (channels_last=False), to float rounding."""
    from ar_ros.backends.torch_cpu import packing
    if not packing._pointwise_ops():
        pytest.skip("this torch has no oneDNN pointwise convolution")
    torch.manual_seed(0)
    net = _randomise_bn(AlphaRefineNet(NetConfig(input_size=128, with_top=False, crop_mode="clean", **config))).eval()
    packed, plain = Refiner(net), Refiner(net, channels_last=False)
    convs = [m for m in packed.net.modules() if isinstance(m, nn.Conv2d)]
    assert not convs and any(isinstance(m, packing._PackedConv) for m in packed.net.modules())
    assert any(isinstance(m, nn.Conv2d) for m in plain.net.modules())
    boxes = {"a": (200.0, 150.0, 120.0, 90.0), "b": (60.0, 40.0, 80.0, 100.0)}
    for r in (packed, plain):
        r.set_targets(frame, boxes)
    got, want = packed.refine(frame, boxes, mask=True), plain.refine(frame, boxes, mask=True)
    for tid in boxes:
        np.testing.assert_allclose(got[tid].raw_box, want[tid].raw_box, atol=1e-3)
        assert np.abs(got[tid].mask - want[tid].mask).max() < 1e-4


def test_a_packed_network_is_reused_on_cpu_fp32_and_refused_elsewhere_with_a_clear_error(small_net, frame):
    from ar_ros.backends.torch_cpu import cpu, packing
    if not packing._pointwise_ops():
        pytest.skip("this torch has no oneDNN pointwise convolution")
    first = Refiner(small_net)
    assert packing.is_prepared(first.net)
    again = Refiner(first.net)  # as it is: the copy shares the packed weights
    box = (200.0, 150.0, 120.0, 90.0)
    for r in (first, again):
        r.set_targets(frame, {"a": box})
    assert again.refine(frame, {"a": box})["a"].raw_box == first.refine(frame, {"a": box})["a"].raw_box
    if cpu.cpu_bf16_units():
        with pytest.raises(ValueError, match="prepared for CPU fp32"):
            Refiner(first.net, precision="bf16")
