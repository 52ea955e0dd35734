"""CUDA graphs' shape bookkeeping (plain Python, on CPU): which graphs warm_up captures, how batches pad.
The captures themselves need a GPU: benchmarks/gpu_check.py runs them (cuda_graphs_vs_eager)."""
import copy

import pytest
import torch

from ar_ros.backends.base import BackendError, SearchBackend
from ar_ros.backends.cuda_graphs import (BOX, LOGITS, MASK, TEMPLATE, CudaGraphsBackend, bucket, capture_sizes,
                                         graph_keys, mode_of, search_modes)


def test_capture_sizes_pad_any_batch_by_at_most_one_and_a_half():
    assert capture_sizes(32) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    assert capture_sizes(1) == (1,)
    assert capture_sizes(20) == (1, 2, 3, 4, 6, 8, 12, 16, 20)  # the maximum itself is always a size
    for top in (1, 5, 20, 32, 64):
        sizes = capture_sizes(top)
        for n in range(1, top + 1):
            b = bucket(n, sizes)
            assert n <= b <= max(n * 1.5, 1) and b in sizes
        assert bucket(top + 1, sizes) is None  # over the largest: eager
    with pytest.raises(ValueError):
        capture_sizes(0)


def test_modes_a_caller_can_use_are_all_warmed_up():
    assert search_modes(False) == [BOX]
    assert search_modes(True) == [BOX, MASK, LOGITS]
    assert search_modes(True, mask_logits=False) == [BOX, MASK]
    assert mode_of(False, True) == BOX  # logits only count with a mask
    assert mode_of(True, True) == LOGITS and mode_of(True, False) == MASK


def test_warm_up_plan_covers_every_batch_from_one_to_max_targets_for_both_mask_modes():
    sizes = capture_sizes(32)
    keys = graph_keys(range(1, 33), True, sizes)
    assert len(keys) == len(sizes) * 4  # template + box + mask + logits per size
    for n in range(1, 33):
        for mode in (TEMPLATE, BOX, MASK, LOGITS):
            assert (bucket(n, sizes), mode) in keys
    # a refiner that never asks for masks: boxes and templates only; batches over the largest run eagerly
    assert graph_keys([1, 3, 40], False, sizes) == [(1, TEMPLATE), (1, BOX), (3, TEMPLATE), (3, BOX)]
    assert graph_keys([], True, sizes) == []


def test_the_backend_is_a_search_backend_and_refuses_a_network_off_the_gpu(small_net):
    assert issubclass(CudaGraphsBackend, SearchBackend)
    with pytest.raises(BackendError, match="CUDA device"):
        CudaGraphsBackend(copy.deepcopy(small_net), torch.device("cpu"), "fp32")


@pytest.fixture
def ieee_fp32():
    """cuDNN in IEEE fp32 (no TF32): a graph may hold other algorithms than eager picks (cudnn.benchmark
    during capture), which then differ by float rounding only."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_warmed_up_shapes_replay_and_others_run_eagerly(small_net, ieee_fp32):
    backend = CudaGraphsBackend(copy.deepcopy(small_net), torch.device("cuda"), "fp32", max_graph_batch=4)
    assert backend.device.index is not None  # pinned to cuda:N
    backend.warm_up([1, 3], with_mask=False)
    assert sorted(backend.captured, key=repr) == sorted(graph_keys([1, 3], False, backend.sizes), key=repr)
    net = backend.net
    images = torch.randn(3, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        kernels = backend.template(images)
        replayed = backend.search(images, kernels)
        again = backend.search(images[:2], kernels[:2])  # a size not warmed up: eager
        eager = net.search(images, net.template(images))
        backend.search(images, kernels, with_mask=True)  # not warmed up: eager, counted
    assert torch.allclose(replayed["boxes"], eager["boxes"], atol=1e-3)
    assert torch.allclose(again["boxes"], eager["boxes"][:2], atol=1e-3)
    assert backend.eager_calls == {(2, BOX): 1, (3, MASK): 1}
