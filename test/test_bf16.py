"""bf16 on CPUs with bf16 units: refused elsewhere, boxes like fp32 where supported, never picked by ``auto``."""
import numpy as np
import pytest
import torch

from ar_ros import Refiner
from ar_ros.backends.torch_cpu import bf16 as bf16_module, cpu, packing
from ar_ros.backends.torch_cpu.graphs import graphs_available
from ar_ros.eval.precision_check import check_bf16
from ar_ros.data.synthetic import Sequence

HAS_BF16 = bool(cpu.cpu_bf16_units())


def no_bf16_units(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_bf16_units", lambda: "")


def test_bf16_is_refused_cleanly_on_a_cpu_without_bf16_units(monkeypatch, small_net):
    no_bf16_units(monkeypatch)
    with pytest.raises(ValueError, match=r"needs a CPU with bf16 units .* use 'fp32'"):
        Refiner(small_net, precision="bf16")
    with pytest.raises(ValueError, match="bf16 units"):
        check_bf16(small_net, [Sequence(7, 3, (160, 120))])
    r = Refiner(small_net, precision="auto")
    assert r.dtype == torch.float32 and r.precision_note == "fp32: auto on cpu"


def test_unknown_precision_names_the_choices(small_net):
    with pytest.raises(ValueError, match="bf16"):
        Refiner(small_net, precision="int4")


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_bf16_boxes_agree_with_fp32_on_trained_weights():
    # the shipped model: the only trained weights in the repository (random weights say nothing about bf16)
    fp32, bf16 = Refiner(None, precision="fp32"), Refiner(None, precision="bf16")
    assert bf16.dtype == torch.bfloat16
    frames = list(Sequence(100_003, 8, (320, 240)))
    for r in (fp32, bf16):
        r.set_target(frames[0].image, frames[0].box)
    assert bf16._kernels["0"].dtype == torch.bfloat16  # the backbone really ran in bf16
    from ar_ros.engine.boxes import iou_rows
    from ar_ros.eval.benchmark import AGREEMENT_MIN_IOU
    diffs, a_boxes, b_boxes = [], [], []
    for f in frames[1:]:
        a, b = fp32.refine(f.image, {"0": f.box})["0"], bf16.refine(f.image, {"0": f.box}, mask=True)["0"]
        c = bf16.refine(f.image, {"0": f.box})["0"]  # box only: the oneDNN Graph search where available
        assert not b.fallback and b.mask is not None and b.mask.dtype == np.float32
        diffs += [np.abs(np.subtract(a.box, b.box)).max(), np.abs(np.subtract(a.box, c.box)).max()]
        a_boxes += [a.box, a.box]
        b_boxes += [b.box, c.box]
    # the auto gate's criterion, frame by frame, and the 0.5 px: the MobileNetV2 defaults moved boxes
    # up to 0.8 px here until biases and the layers with |w| ~ 100 stayed fp32 (epoch-38 default: 0.21 px
    # eager with masks, 0.31 px as graphs; the ResNet-18 default moved them 0.08 px)
    assert float(iou_rows(np.array(a_boxes), np.array(b_boxes)).mean()) >= AGREEMENT_MIN_IOU, diffs
    assert max(diffs) < 0.5, diffs


def test_auto_never_picks_bf16_and_the_gate_writes_nothing(monkeypatch, small_net, tmp_path):
    # pretend bf16 units, so this runs on any CPU (without them bf16 is emulated: slow, still correct)
    monkeypatch.setattr(cpu, "cpu_bf16_units", lambda: "AVX-512 BF16")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seqs = [Sequence(7, 3, (160, 120))]
    verdict = check_bf16(small_net, seqs, min_iou=0.0, max_time_ratio=float("inf"), repeat=2)
    assert verdict["bf16"] is True and 0.0 <= verdict["mean_iou"] <= 1.0 and verdict["time_ratio"] > 0
    assert not (tmp_path / "cache").exists()  # no hidden file decides which code runs
    assert Refiner(small_net, precision="auto").dtype == torch.float32  # auto: fp32 on CPU, whatever was measured
    assert Refiner(small_net, precision="bf16").dtype == torch.bfloat16


def run_cli(argv, capsys):
    from ar_ros.cli import main
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_check_bf16_command_refuses_in_one_line_without_bf16_units(monkeypatch, capsys):
    no_bf16_units(monkeypatch)
    code, out, err = run_cli(["check-bf16", "--suite", "tiny"], capsys)
    assert code == 2 and err.count("\n") == 1 and "needs a CPU with bf16 units" in err, err


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_check_bf16_command_says_whether_to_set_bf16(capsys):
    code, out, err = run_cli(["check-bf16", "--suite", "tiny"], capsys)
    assert code in (0, 1), err  # accepted or rejected: both are measured verdicts
    assert ("set precision bf16" in out) == (code == 0), out


def bf16_copy(net, **options):
    """The folded, channels_last bf16 copy of ``net`` that the bf16 Refiner runs (``to_bf16`` options)."""
    import copy
    from ar_ros.model.fuse import fold_batchnorm
    folded = copy.deepcopy(net).eval()
    fold_batchnorm(folded)
    folded = folded.to(memory_format=torch.channels_last)
    if options.pop("fp32", False):
        return folded
    return bf16_module.to_bf16(folded, **options)


def relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
@pytest.mark.parametrize("backbone,depth", [("resnet", 18), ("resnet", 50), ("mobilenet_v2", 0)])
def test_fused_residual_blocks_equal_the_unfused_bf16_network(backbone, depth):
    # the residual add and its activation inside the convolution (one rounding to bf16 instead of two):
    # the same maps as the unfused bf16 network up to bf16 rounding, and no further from fp32
    from ar_ros.model import AlphaRefineNet, NetConfig
    from ar_ros.model.backbone import BasicBlock, Bottleneck
    from ar_ros.model.mobilenet import InvertedResidual
    torch.manual_seed(3)
    net = AlphaRefineNet(NetConfig(backbone=backbone, depth=depth or 18, input_size=128, with_top=False)).eval()
    for m in net.modules():  # trained-like BatchNorm statistics, so that folding is not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    fused, unfused, fp32 = bf16_copy(net), bf16_copy(net, fuse_blocks=False), bf16_copy(net, fp32=True)
    blocks = (packing._FusedResidual,)
    residual = sum(type(m) in (BasicBlock, Bottleneck) or (type(m) is InvertedResidual and m.use_res_connect)
                   for m in net.modules())
    assert residual > 0 and sum(isinstance(m, blocks) for m in fused.modules()) == residual
    assert not any(isinstance(m, blocks) for m in unfused.modules())
    if backbone == "resnet":  # the stem's ReLU is fused too, and no ReLU module is left in the backbone
        assert isinstance(fused.feature_extractor.conv1, packing._PackedConv)
        assert not any(isinstance(m, torch.nn.ReLU) for m in fused.feature_extractor.modules())
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 4 - 2
    images = images.contiguous(memory_format=torch.channels_last)
    maps = {}
    with torch.inference_mode():
        for name, n in (("fused", fused), ("unfused", unfused), ("fp32", fp32)):
            x = images if name == "fp32" else images.to(torch.bfloat16)
            feats = n.feature_extractor(x, ("conv1", "layer1", "layer2", "layer3"))
            kernels = n.template(x)
            maps[name] = {**feats, "neck": n.neck(kernels, feats["layer3"]),
                          "mask": n.search(x, kernels, with_mask=True)["mask"]}
    for key in maps["fp32"]:
        assert relative(maps["fused"][key], maps["unfused"][key]) < 0.03, key
        assert relative(maps["fused"][key], maps["fp32"][key]) <= 1.25 * relative(maps["unfused"][key],
                                                                               maps["fp32"][key]) + 1e-3, key


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_convolutions_with_large_folded_weights_and_all_biases_stay_fp32(small_net):
    import copy
    net = copy.deepcopy(small_net)
    with torch.no_grad():  # a BatchNorm with a near-zero variance folds into weights ~ 100
        net.feature_extractor.layer1[0].bn1.running_var[3] = 1e-6
    folded = bf16_copy(net, fp32=True)
    wide = folded.feature_extractor.layer1[0].conv1
    assert float(wide.weight.detach().abs().max()) > bf16_module.FP32_WEIGHT_LIMIT
    bf16 = bf16_copy(net)
    kept = bf16.feature_extractor.layer1[0]
    assert not isinstance(kept, packing._FusedResidual)  # its conv1 runs in fp32, so it is not fused
    assert isinstance(kept.conv1, packing._Float32) and kept.conv1.out_dtype == torch.bfloat16
    conv = kept.conv1.module
    assert isinstance(conv, packing._PackedConv) and conv.packed.dtype == torch.float32
    assert torch.equal(conv.bias_fp32, wide.bias)  # the fp32 values, not bf16-rounded ones
    head = bf16.corner_head.score  # the two corners' score convolutions (merged towers), in fp32
    assert isinstance(head, packing._Float32) and head.out_dtype is None and head.module.packed.dtype == torch.float32
    assert torch.equal(head.module.bias_fp32, torch.cat([folded.corner_head.conv5_tl.bias,
                                                         folded.corner_head.conv5_br.bias]))
    packed = [m for m in bf16.modules() if isinstance(m, packing._PackedConv) and m.bias is not None]
    assert packed and all(m.bias_fp32.dtype == torch.float32 for m in packed)
    images = torch.rand(1, 3, 128, 128).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = bf16.search(images, bf16.template(images), with_mask=True)
    assert torch.isfinite(out["boxes"]).all() and out["mask"].dtype == torch.bfloat16


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_merged_corner_towers_give_the_separate_towers_boxes(small_net):
    import copy
    net = copy.deepcopy(small_net)
    for m in net.corner_head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    merged, separate = bf16_copy(net), bf16_copy(net, merge_corner_towers=False)
    assert isinstance(merged.corner_head, packing._MergedCornerHead)
    assert type(separate.corner_head).__name__ == "CornerHead"
    score = merged.corner_head.score  # both corners' score convolutions, in fp32
    assert isinstance(score, packing._Float32) and score.module.packed.dtype == torch.float32
    images = (torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 4 - 2)
    images = images.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        kernels = separate.template(images)
        a, b = merged.search(images, kernels), separate.search(images, kernels)
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["score"], b["score"], atol=1e-5)
    # unfolded BatchNorm (fold_batchnorm=False): the towers are left as they are
    unfolded = bf16_module.to_bf16(copy.deepcopy(net).to(memory_format=torch.channels_last))
    assert type(unfolded.corner_head).__name__ == "CornerHead"


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (AMX / AVX-512 BF16 / Arm BF16)")
def test_graphed_searches_agree_with_the_eager_bf16_network(small_net):
    import copy
    from ar_ros.backends.torch_cpu.backend import TorchCpuBackend
    net = copy.deepcopy(small_net)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    backend = TorchCpuBackend(net, "bf16")
    if not graphs_available():
        assert backend.graphs is None
        return
    backend.warm_up([1, 3], with_mask=True)  # bf16 graphs are box-only whatever is asked
    assert not torch.jit.onednn_fusion_enabled()  # switched on to build the graphs only
    assert sorted((k[0][0], k[-1]) for k in backend.graphs.graphs) == [(1, False), (4, False)], backend.graphs.failure  # 3 runs in the graph of 4
    images = (torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(4)) * 4 - 2)
    images = images.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        kernels = backend.template(images)
        for n in (1, 3):
            a, b = backend.search(images[:n], kernels[:n]), backend.net.search(images[:n], kernels[:n])
            assert set(a) == {"boxes", "score"}
            # same bf16 arithmetic, other kernels and roundings (fused partitions, bf16 biases)
            assert torch.allclose(a["boxes"].float(), b["boxes"].float(), atol=0.5), (a["boxes"], b["boxes"])
            assert torch.allclose(a["score"].float(), b["score"].float(), atol=0.02)
        masks = backend.search(images[:1], kernels[:1], with_mask=True)  # masks: the eager network ...
        assert masks["mask"].shape == (1, 1, 128, 128)
        # ... and the boxes the box-only graph's, so asking for a mask does not move them
        assert torch.equal(masks["boxes"], backend.search(images[:1], kernels[:1])["boxes"])
