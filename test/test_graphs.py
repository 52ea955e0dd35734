"""CPU searches as oneDNN Graph graphs (engine/graphs.py): every architecture builds them, they give the
eager network's boxes and masks, and the refiner falls back to eager where there is no graph."""
import subprocess
import sys
import textwrap

import pytest
import torch

from ar_ros import Refiner
from ar_ros.engine import graphs as graphs_module
from ar_ros.engine.graphs import SearchGraphs, graphs_available
from ar_ros.model.heads import upsample2

pytestmark = pytest.mark.skipif(not graphs_available(), reason="this torch has no oneDNN Graph fuser")

# a crash of oneDNN Graph is a SIGSEGV: the architectures are built in a child process, so the test fails
# (with the signal) instead of taking the pytest worker down
CHILD = textwrap.dedent("""
    import sys, torch
    from ar_ros.engine.graphs import SearchGraphs
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
    graphs = SearchGraphs(net, after=1, background=False)
    images = (torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 4 - 2)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        kernels = net.template(images)
        for n in (1, 2):
            for with_mask in (False, True):
                out = graphs.search(images[:n], kernels[:n], with_mask)
                assert out is not None, graphs.failure
                ref = net.search(images[:n], kernels[:n], with_mask=with_mask)
                assert set(out) == set(ref), (set(out), set(ref))
                assert torch.allclose(out["boxes"], ref["boxes"], atol=1e-3), (out["boxes"], ref["boxes"])
                assert torch.allclose(out["score"], ref["score"], atol=1e-4)
                if with_mask:
                    assert torch.allclose(out["mask"], ref["mask"], atol=1e-4)
    assert len(graphs.graphs) == 4 and None not in graphs.graphs.values()
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


def test_refiner_traces_a_shape_after_a_few_eager_searches_and_refines_as_eager(small_net, frame):
    boxes = {"a": (200.0, 150.0, 120.0, 90.0), "b": (60.0, 40.0, 80.0, 100.0)}
    graphed, eager = Refiner(small_net, box_mode="fused"), Refiner(small_net, box_mode="fused", cpu_graphs=False)
    assert eager.graphs is None and isinstance(graphed.graphs, SearchGraphs)
    for r in (graphed, eager):
        r.set_targets(frame, boxes)
    for call in range(graphs_module.GRAPH_AFTER + 1):
        out, ref = graphed.refine(frame, boxes), eager.refine(frame, boxes)
        graphed.graphs.wait()  # built in a background thread, started by the GRAPH_AFTER-th call
        built = [g for g in graphed.graphs.graphs.values() if g is not None]
        assert len(built) == (1 if call + 1 >= graphs_module.GRAPH_AFTER else 0), graphed.graphs.failure
        for tid in boxes:
            assert out[tid].box == pytest.approx(ref[tid].box, abs=1e-3)
            assert out[tid].score == pytest.approx(ref[tid].score, abs=1e-4)
    # one target: another shape, eager again until it too has been seen often enough
    one = {"a": boxes["a"]}
    graphed.refine(frame, one)
    assert len(graphed.graphs.graphs) == 1 and graphed.graphs.seen[next(k for k in graphed.graphs.seen
                                                                         if k[0][0] == 1)] == 1
    masked = graphed.refine(frame, boxes, mask=True)  # fused already ran the mask: the same graph
    assert masked["a"].mask is not None and masked["a"].box == out["a"].box
    assert not torch.jit.onednn_fusion_enabled()


def test_a_graph_that_cannot_be_built_leaves_the_eager_network_running(small_net, frame, monkeypatch):
    boxes = {"a": (200.0, 150.0, 120.0, 90.0)}
    graphed, eager = Refiner(small_net), Refiner(small_net, cpu_graphs=False)
    for r in (graphed, eager):
        r.set_targets(frame, boxes)
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no trace")))
    for _ in range(graphs_module.GRAPH_AFTER + 2):
        assert graphed.refine(frame, boxes)["a"].box == eager.refine(frame, boxes)["a"].box
        graphed.graphs.wait()
    assert "no trace" in graphed.graphs.failure and list(graphed.graphs.graphs.values()) == [None]
    # full: a further shape (two targets) is never traced (the failing trace would say so)
    graphed.set_target(frame, (10.0, 10.0, 50.0, 50.0), "b")
    graphed.graphs.failure, graphed.graphs.max_graphs = "", 1
    for _ in range(graphs_module.GRAPH_AFTER + 1):
        graphed.refine(frame, {"a": boxes["a"], "b": (10.0, 10.0, 50.0, 50.0)})
        graphed.graphs.wait()
    assert graphed.graphs.failure == "" and len(graphed.graphs.graphs) == 1
    assert graphed.graphs.plain is None  # full: the plain network's weights are let go


def test_graphs_are_off_where_asked_or_where_they_cannot_apply(small_net, monkeypatch):
    assert Refiner(small_net, cpu_graphs=False).graphs is None
    assert Refiner(small_net, channels_last=False).graphs is None      # the graph fuser's layout only
    assert Refiner(small_net, fold_batchnorm=False).graphs is None     # the unmodified network, as timed
    prepared = Refiner(small_net)
    assert Refiner(prepared.net).graphs is None  # a packed network: no plain one to trace
    monkeypatch.setenv("AR_ROS_NO_GRAPHS", "1")
    assert not graphs_available() and Refiner(small_net).graphs is None


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


def test_warm_up_builds_the_one_target_graph_and_leaves_the_targets_alone(small_net, frame):
    r = Refiner(small_net, box_mode="fused")
    r.set_target(frame, (200.0, 150.0, 120.0, 90.0), "a")
    r.warm_up()
    assert r.targets == ["a"] and r.passes == 0
    built = [key for key, g in r.graphs.graphs.items() if g is not None]
    assert len(built) == 1 and built[0][0][0] == 1 and built[0][-1] is True  # one target, box + mask (fused)
    r.refine(frame, {"a": (200.0, 150.0, 120.0, 90.0)})
    assert len(r.graphs.graphs) == 1  # the first real frame ran that graph
    Refiner(small_net, cpu_graphs=False).warm_up()  # eager: one pass, nothing to build
    quick = Refiner(small_net, box_mode="fused")
    quick.warm_up(timeout=0.0)  # returns at once; the build goes on in the background
    quick.graphs.wait()
    assert [g is not None for g in quick.graphs.graphs.values()] == [True]


def test_a_stream_never_waits_for_a_graph_and_builds_run_one_after_another(small_net, frame, monkeypatch):
    """The graph of a new shape is built in a thread while eager refines; builds run one after another,
    and big weights get fewer graphs (each holds a copy)."""
    import threading
    r = Refiner(small_net)
    one, two = {"a": (200.0, 150.0, 120.0, 90.0)}, {"a": (200.0, 150.0, 120.0, 90.0), "b": (20.0, 20.0, 60.0, 60.0)}
    r.set_targets(frame, two)
    release = threading.Event()
    real_trace = graphs_module.trace_search

    def slow_trace(*args, **kwargs):
        release.wait(60)
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(graphs_module, "trace_search", slow_trace)
    for _ in range(graphs_module.GRAPH_AFTER):
        r.refine(frame, one)
    assert r.graphs.building is not None and not r.graphs.graphs  # building, and the stream went on eager
    for _ in range(graphs_module.GRAPH_AFTER + 1):
        r.refine(frame, two)  # another shape: queued behind the first one, the stream still eager
    assert len(r.graphs.graphs) == 0 and len(r.graphs.pending) == 2
    release.set()
    r.graphs.wait()  # both, one after the other, in the same thread
    assert sum(g is not None for g in r.graphs.graphs.values()) == 2 and not r.graphs.pending
    assert r.graphs.building is None
    monkeypatch.setattr(graphs_module, "GRAPH_MEMORY", 3 * sum(t.numel() * t.element_size()
                                                              for t in small_net.state_dict().values()))
    assert SearchGraphs(small_net).max_graphs == 3


EXIT_CHILD = textwrap.dedent("""
    import threading, numpy as np, torch
    from ar_ros import Refiner
    from ar_ros.engine.graphs import GRAPH_AFTER
    from ar_ros.model import AlphaRefineNet, NetConfig
    torch.manual_seed(0)
    r = Refiner(AlphaRefineNet(NetConfig(depth=18, input_size=128, with_top=False, crop_mode="clean")).eval())
    frame, boxes = np.zeros((240, 320, 3), np.uint8), {"a": (100.0, 80.0, 60.0, 50.0)}
    r.set_targets(frame, boxes)

    def work():  # as the node's worker: a daemon thread, whose threads would be daemons too
        for _ in range(GRAPH_AFTER):
            r.refine(frame, boxes)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join()
    assert r.graphs.building is not None  # the interpreter exits while the graph is being built
    print("exiting")
""")


def test_a_process_that_exits_while_a_graph_is_built_exits_cleanly():
    proc = subprocess.run([sys.executable, "-c", EXIT_CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "exiting" in proc.stdout, f"rc {proc.returncode}\n{proc.stderr[-3000:]}"


def test_close_drops_the_queue_and_a_failed_thread_start_leaves_eager_running(small_net, frame, monkeypatch):
    import threading
    one = {"a": (200.0, 150.0, 120.0, 90.0)}
    r = Refiner(small_net)
    r.set_targets(frame, one)
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (_ for _ in ()).throw(RuntimeError("no thread")))
    for _ in range(graphs_module.GRAPH_AFTER):
        r.refine(frame, one)
    assert "no thread" in r.graphs.failure and not r.graphs.pending and r.graphs.building is None
    monkeypatch.setattr(threading.Thread, "start", real_start)
    r.refine(frame, one)  # a thread can be had again: this shape is built after all
    r.graphs.wait()
    assert len(r.graphs.graphs) == 1
    r.close()  # nothing more is built, what there is keeps running
    two = {"a": one["a"], "b": (20.0, 20.0, 60.0, 60.0)}
    r.set_targets(frame, two)
    for _ in range(graphs_module.GRAPH_AFTER + 1):
        r.refine(frame, two)
    assert r.graphs.building is None and len(r.graphs.graphs) == 1 and r.graphs.plain is None
    assert r.refine(frame, one)["a"].box
