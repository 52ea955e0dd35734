"""CPU searches as oneDNN Graph graphs (backends/torch_cpu/graphs.py): every architecture builds them, they give the
eager network's boxes and masks, and the refiner falls back to eager where there is no graph."""
import subprocess
import sys
import textwrap

import pytest
import torch

from ar_ros import Refiner
from ar_ros.backends.torch_cpu.graphs import SearchGraphs, graphs_available
from ar_ros.model.heads import upsample2

pytestmark = pytest.mark.skipif(not graphs_available(), reason="this torch has no oneDNN Graph fuser")

# a crash of oneDNN Graph is a SIGSEGV: the architectures are built in a child process, so the test fails
# (with the signal) instead of taking the pytest worker down
CHILD = textwrap.dedent("""
    import sys, torch
    from ar_ros.backends.torch_cpu.graphs import SearchGraphs
    from ar_ros.model import AlphaRefineNet, NetConfig
    from ar_ros.model.fuse import fold_batchnorm
    torch.set_num_threads(1)
    backbone, mask_head = sys.argv[1], sys.argv[4]
    depth, stride, size = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
    torch.manual_seed(0)
    net = AlphaRefineNet(NetConfig(backbone=backbone, depth=depth, input_size=size, with_top=False, crop_mode="clean",
                                   corner_stride=stride, mask_head=mask_head)).eval()
    for m in net.modules():  # BatchNorm statistics that are not the identity, so folding changes weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    fold_batchnorm(net)
    net = net.to(memory_format=torch.channels_last)
    graphs = SearchGraphs(net)
    images = (torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 4 - 2)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        kernels = net.template(images)
        for n in (1, 2):
            for with_mask in (False, True):
                assert graphs.search(images[:n], kernels[:n], with_mask) is None  # not built: eager runs
                assert graphs.build(images[:n], kernels[:n], with_mask), graphs.failure
                out = graphs.search(images[:n], kernels[:n], with_mask)
                assert out is not None, graphs.failure
                ref = net.search(images[:n], kernels[:n], with_mask=with_mask)
                assert set(out) == set(ref), (set(out), set(ref))
                assert torch.allclose(out["boxes"], ref["boxes"], atol=1e-3), (out["boxes"], ref["boxes"])
                assert torch.allclose(out["score"], ref["score"], atol=1e-4)
                if with_mask:
                    assert torch.allclose(out["mask"], ref["mask"], atol=1e-4)
    assert len(graphs.graphs) == 4
    assert not torch.jit.onednn_fusion_enabled()  # switched on to compile only
    print("ok")
""")


@pytest.mark.parametrize("backbone,depth,stride,mask_head", [
    ("resnet", 18, 16, "authors"),      # the authors' head and decoder (their checkpoints)
    ("resnet", 34, 16, "authors"),
    ("mobilenet_v2", 0, 8, "slim"),     # the shipped model's architecture
    ("mobilenet_v2", 0, 16, "authors"),
    ("mobilenet_v2", 0, 8, "slim4"),
    ("efficientnet_lite0", 0, 8, "slim"),
])
def test_every_architecture_builds_graphs_that_match_the_eager_network(backbone, depth, stride, mask_head):
    size = "128"
    proc = subprocess.run([sys.executable, "-c", CHILD, backbone, str(depth), str(stride), mask_head, size],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), \
        f"rc {proc.returncode} (negative: killed by that signal)\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_warm_up_builds_a_graph_per_batch_size_and_refines_as_eager(small_net, frame):
    boxes = {"a": (200.0, 150.0, 120.0, 90.0), "b": (60.0, 40.0, 80.0, 100.0)}
    graphed, eager = Refiner(small_net, box_mode="fused"), Refiner(small_net, box_mode="fused", cpu_graphs=False)
    assert eager.graphs is None and isinstance(graphed.graphs, SearchGraphs)
    for r in (graphed, eager):
        r.set_targets(frame, boxes)
    graphed.refine(frame, boxes)
    assert graphed.graphs.graphs == {}  # nothing is ever built behind the caller's back
    graphed.warm_up(max_targets=2)
    assert graphed.targets == ["a", "b"] and graphed.passes == 1  # warm_up leaves targets and counters alone
    built = sorted((key[0][0], key[-1]) for key in graphed.graphs.graphs)
    assert built == [(1, True), (2, True)], graphed.graphs.failure  # fused: box + mask graphs, 1 and 2 targets
    for _ in range(2):
        out, ref = graphed.refine(frame, boxes), eager.refine(frame, boxes)
        for tid in boxes:
            assert out[tid].box == pytest.approx(ref[tid].box, abs=1e-3)
            assert out[tid].score == pytest.approx(ref[tid].score, abs=1e-4)
    three = {**boxes, "c": (400.0, 300.0, 90.0, 70.0)}  # three targets: the graph of 4, padded with a zero crop
    for r in (graphed, eager):
        r.set_targets(frame, {"c": three["c"]})
    graphed.warm_up(max_targets=3)
    assert sorted(key[0][0] for key in graphed.graphs.graphs) == [1, 2, 4]
    out, ref = graphed.refine(frame, three), eager.refine(frame, three)
    for tid in three:
        assert out[tid].box == pytest.approx(ref[tid].box, abs=1e-3)
    masked = graphed.refine(frame, boxes, mask=True)  # fused already ran the mask: the same graph
    assert masked["a"].mask is not None and masked["a"].box == out["a"].box
    assert not torch.jit.onednn_fusion_enabled()


def test_a_graph_that_cannot_be_built_leaves_the_eager_network_running(small_net, frame, monkeypatch):
    boxes = {"a": (200.0, 150.0, 120.0, 90.0)}
    graphed, eager = Refiner(small_net), Refiner(small_net, cpu_graphs=False)
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no trace")))
    graphed.warm_up()
    assert "no trace" in graphed.graphs.failure and graphed.graphs.graphs == {}
    for r in (graphed, eager):
        r.set_targets(frame, boxes)
    assert graphed.refine(frame, boxes)["a"].box == eager.refine(frame, boxes)["a"].box
    monkeypatch.undo()
    graphed.graphs.max_graphs = 1
    graphed.warm_up(max_targets=3)  # room for one graph: the others run eager, the plain network let go
    assert len(graphed.graphs.graphs) == 1 and graphed.graphs.plain is None


def test_graphs_are_off_where_asked_or_where_they_cannot_apply(small_net):
    assert Refiner(small_net, cpu_graphs=False).graphs is None
    assert Refiner(small_net, channels_last=False).graphs is None      # the graph fuser's layout only
    assert Refiner(small_net, fold_batchnorm=False).graphs is None     # the unmodified network, as timed
    prepared = Refiner(small_net)
    assert Refiner(prepared.net).graphs is None  # a packed network: no plain one to trace


def test_upsampled_maps_come_in_the_layout_they_are_added_to():
    """The layout rule that keeps oneDNN Graph from crashing (heads.upsample2), and that eager is unchanged."""
    x = torch.rand(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    like_cl = torch.rand(1, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    like_nchw = torch.rand(1, 16, 16, 16)
    assert upsample2(x, like_cl).is_contiguous(memory_format=torch.channels_last)
    assert upsample2(x, like_nchw).is_contiguous()
    assert torch.equal(upsample2(x, like_cl), upsample2(x, like_nchw))
    # the constant scale gives the pixels of an upsampling to the other map's size
    sized = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(upsample2(x, like_nchw), sized)
