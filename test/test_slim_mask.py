"""The slim mask decoder (``NetConfig.mask_head="slim"``): its cost, checkpoints, the engine, ONNX, and
training it alone on a trained refiner (``TrainConfig.freeze_box``)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from ar_ros import Refiner
from ar_ros.model import AlphaRefineNet, NetConfig, load_checkpoint, load_network, save_checkpoint
from ar_ros.train.trainer import TrainConfig, train

AUTHORS = NetConfig(input_size=128, with_top=False, crop_mode="clean", backbone="mobilenet_v2")
SLIM = dataclasses.replace(AUTHORS, mask_head="slim")


def mask_branch_macs(net: AlphaRefineNet) -> int:
    """Multiply-adds of the convolutions of ``feat_adjust`` and ``mask_head`` in one 128 px mask search."""
    total = []

    def count(module, _inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total.append(output.numel() * k)

    hooks = [m.register_forward_hook(count) for part in (net.feat_adjust, net.mask_head)
             for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        x = torch.rand(1, 3, 128, 128)
        net.search(x, net.template(x), with_mask=True)
    for h in hooks:
        h.remove()
    return sum(total)


def test_slim_decoder_does_a_tenth_of_the_work_and_gives_frame_sized_probabilities():
    torch.manual_seed(0)
    authors, slim = AlphaRefineNet(AUTHORS).eval(), AlphaRefineNet(SLIM).eval()
    assert mask_branch_macs(slim) * 10 < mask_branch_macs(authors)
    with torch.inference_mode():
        out = slim(torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128), with_mask=True)
    assert out["mask"].shape == (2, 1, 128, 128) and ((out["mask"] >= 0) & (out["mask"] <= 1)).all()
    with pytest.raises(ValueError, match="mask_head must be one of"):
        dataclasses.replace(AUTHORS, mask_head="tiny")
    # the authors' decoder keeps its checkpoint shapes (their c+m weights load into it)
    assert AlphaRefineNet(NetConfig(input_size=128)).state_dict()["feat_adjust.2.0.weight"].shape == (512, 128, 1, 1)


def test_slim_checkpoint_refines_with_masks_and_exports_to_onnx(tmp_path, frame):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "slim.pt", AlphaRefineNet(SLIM), half=True)
    net, _ = load_network(path)
    assert net.config.mask_head == "slim" and load_checkpoint(path)[1] == SLIM
    refiner = Refiner(str(path), box_mode="fused")
    box = (200.0, 150.0, 120.0, 90.0)
    refiner.set_targets(frame, {"a": box})
    result = refiner.refine(frame, {"a": box}, mask=True)["a"]
    assert np.isfinite(result.raw_box).all() and result.mask.shape == frame.shape[:2]
    pytest.importorskip("onnxruntime")
    from ar_ros.backends.onnx_export import export_onnx
    folder = export_onnx(net.float().eval(), tmp_path / "onnx")
    onnx_refiner = Refiner(str(folder), backend="onnxruntime", box_mode="fused")
    onnx_refiner.set_targets(frame, {"a": box})
    got = onnx_refiner.refine(frame, {"a": box}, mask=True)["a"]
    assert np.allclose(got.raw_box, result.raw_box, atol=0.1) and got.mask.shape == frame.shape[:2]


def test_training_the_mask_branch_alone_keeps_the_box_and_chooses_by_the_fused_box(tmp_path):
    torch.manual_seed(1)
    source = AlphaRefineNet(dataclasses.replace(SLIM, backbone="resnet", depth=18, input_size=64))
    save_checkpoint(tmp_path / "trained.pt", source)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), depth=18, input_size=64, batch_size=4, iters_per_epoch=2,
                      val_batches=1, frame_size=[160, 120], epochs=1, mask_head="slim", freeze_box=True,
                      init_from=str(tmp_path / "trained.pt"), init_backbone=True)
    state, config, _ = load_checkpoint(train(cfg, progress=False))
    assert config.mask_head == "slim"
    want = source.state_dict()
    for key in want:
        same = torch.allclose(state[key].float(), want[key].float(), atol=1e-2)
        if key.startswith(("feature_extractor.", "neck.", "corner_head.")):
            assert same, key  # frozen, BatchNorm statistics included
    assert not torch.allclose(state["mask_head.v0.0.weight"].float(), want["mask_head.v0.0.weight"], atol=1e-4)
    record = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[0])
    assert record["val_score"] == pytest.approx(record["val_fused_iou"])
    with pytest.raises(ValueError, match=r"needs init_backbone \(--init-backbone\)"):  # a random backbone frozen
        train(dataclasses.replace(cfg, out_dir=str(tmp_path / "bad"), init_backbone=False), progress=False)


def test_slim4_decoder_ends_at_stride_4_starts_from_a_slim_one_and_exports(tmp_path, frame):
    from ar_ros.cli import MASK_HEAD_CHOICES
    from ar_ros.model.heads import MASK_HEADS
    from ar_ros.train.trainer import load_heads
    assert set(MASK_HEAD_CHOICES) == set(MASK_HEADS)  # the CLI's list (no torch import for --help)
    torch.manual_seed(0)
    slim4 = AlphaRefineNet(dataclasses.replace(SLIM, mask_head="slim4")).eval()
    assert mask_branch_macs(slim4) < mask_branch_macs(AlphaRefineNet(SLIM)) * 0.85  # and 7 fewer layers
    state = slim4.state_dict()
    assert not any(k.startswith(("mask_head.v0.", "mask_head.h0.", "feat_adjust.0.")) for k in state)
    # every decoder tensor it has is a slim decoder's (same name and shape): a trained slim decoder starts it
    slim_state = AlphaRefineNet(SLIM).state_dict()
    assert all(slim_state[k].shape == v.shape for k, v in state.items())
    path = save_checkpoint(tmp_path / "slim.pt", AlphaRefineNet(SLIM))
    assert load_heads(slim4, str(path)) > 0
    with torch.inference_mode():
        out = slim4(torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128), with_mask=True)
    assert out["mask"].shape == (2, 1, 128, 128)
    refiner = Refiner(slim4)
    assert refiner.resolved_box_mode() == "fused"
    box = (200.0, 150.0, 120.0, 90.0)
    refiner.set_targets(frame, {"a": box})
    result = refiner.refine(frame, {"a": box}, mask=True)["a"]
    pytest.importorskip("onnxruntime")
    from ar_ros.backends.onnx_export import export_onnx
    onnx_refiner = Refiner(str(export_onnx(slim4, tmp_path / "onnx")), backend="onnxruntime")
    onnx_refiner.set_targets(frame, {"a": box})
    assert np.allclose(onnx_refiner.refine(frame, {"a": box}, mask=True)["a"].raw_box, result.raw_box, atol=0.1)
