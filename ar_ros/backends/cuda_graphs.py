"""CUDA graphs for the torch network: each pass captured once in ``warm_up``, then replayed in one launch.

On a GPU, refining a few targets runs about sixty small kernels, and launching them one by one from
Python takes longer than running them. A captured graph replays the whole pass with one launch.

Shapes. A graph has fixed shapes, so batches are padded up to a few *capture sizes* (:func:`capture_sizes`:
1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ..., and ``max_graph_batch`` itself): at most 1.5x the rows of the
batch, on a GPU that is launch-bound at these sizes, for 10 graphs per mode instead of 32. The padding
rows hold whatever the last call left there; the network is per sample (folded BatchNorm, no batch
statistics), so they never touch the real rows. Larger batches run eagerly.

When. Every graph is captured in :meth:`CudaGraphsBackend.warm_up` (the Refiner's warm-up, before the first
frame) for the batch sizes the caller can produce (1..max_targets) and the search modes it can call:
boxes; with ``with_mask`` also boxes + mask and boxes + mask logits (``box_mode: fused`` without masks).
Capturing takes three eager passes and one capture per graph (~0.1 s). A shape that was not warmed up
runs eagerly, never captured during a live frame (:attr:`CudaGraphsBackend.eager_calls` counts them).
Template passes are graphed the same way.

Memory. All graphs share one memory pool: a later capture may reuse blocks that an earlier graph uses as
scratch during its replay, so a graph's output buffers are valid only until the next replay of *any*
graph. :meth:`search` and :meth:`template` therefore return copies (a few device copies per pass, no
synchronisation), and replays must never run concurrently (the Refiner's lock serialises them). Nothing
may call ``torch.cuda.empty_cache()`` during a capture, i.e. during :meth:`warm_up`.

Device. Captures, replays and the side stream of the warm-up passes all run with the network's device
(``cuda:N``) current, whatever device the calling thread has selected.

The shape bookkeeping (:func:`capture_sizes`, :func:`bucket`, :func:`graph_keys`) is plain Python, tested
on CPU; the captures need a GPU (``benchmarks/gpu_check.py``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..model import AlphaRefineNet
from .base import BackendError
from .torch_eager import TorchBackend

MAX_GRAPH_BATCH = 32
WARMUP_PASSES = 3   # eager passes on a side stream before each capture (cuDNN algorithms, lazy init)

#: search modes as (with_mask, mask_logits); a template graph is keyed by the mode TEMPLATE
BOX, MASK, LOGITS = (False, False), (True, False), (True, True)
TEMPLATE = ("template", False)
Key = Tuple[int, Tuple]  # (capture size, mode)


def capture_sizes(max_graph_batch: int) -> Tuple[int, ...]:
    """The padded batch sizes graphs are captured for: powers of two and 1.5x powers of two up to
    ``max_graph_batch``, and that maximum itself (1, 2, 3, 4, 6, 8, 12, 16, 24, 32 for 32)."""
    if max_graph_batch < 1:
        raise ValueError(f"max_graph_batch must be >= 1, got {max_graph_batch}")
    sizes = {1, int(max_graph_batch)}
    p = 2
    while p <= max_graph_batch:
        sizes.add(p)
        if p * 3 // 2 <= max_graph_batch:
            sizes.add(p * 3 // 2)
        p *= 2
    return tuple(sorted(sizes))


def bucket(n: int, sizes: Sequence[int]) -> Optional[int]:
    """The smallest capture size that holds ``n`` rows, or None when ``n`` is over the largest (eager)."""
    return next((s for s in sizes if s >= n), None)


def search_modes(with_mask: bool, mask_logits: bool = True) -> List[Tuple[bool, bool]]:
    """The search modes a caller may use: boxes, and with ``with_mask`` the mask (and its logits where the
    network can stop before the last upsampling)."""
    return [BOX] + ([MASK] + ([LOGITS] if mask_logits else []) if with_mask else [])


def mode_of(with_mask: bool, mask_logits: bool) -> Tuple[bool, bool]:
    """The mode of one search call (logits only count with a mask)."""
    return (bool(with_mask), bool(with_mask and mask_logits))


def graph_keys(batch_sizes: Iterable[int], with_mask: bool, sizes: Sequence[int],
               mask_logits: bool = True) -> List[Key]:
    """The graphs :meth:`CudaGraphsBackend.warm_up` captures for these batch sizes: one template graph and
    one per search mode for every capture size the batches pad to (batches over the largest run eagerly)."""
    padded = sorted({b for b in (bucket(int(n), sizes) for n in batch_sizes if int(n) >= 1) if b is not None})
    modes = [TEMPLATE] + search_modes(with_mask, mask_logits)
    return [(size, mode) for size in padded for mode in modes]


def pinned(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:N`` of the current device, so that captures and replays name one GPU."""
    if device.type != "cuda":
        raise BackendError(f"CUDA graphs need a CUDA device, not {device}")
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


class _Graph:
    """One captured pass: static inputs, the graph, its static outputs."""

    def __init__(self, inputs: Tuple[torch.Tensor, ...], graph: "torch.cuda.CUDAGraph", outputs) -> None:
        self.inputs, self.graph, self.outputs = inputs, graph, outputs

    def replay(self, *args: torch.Tensor):
        """Copy ``args`` into the first rows of the static inputs, replay, return copies of those rows."""
        n = args[0].shape[0]
        with torch.inference_mode():  # the static tensors were made in inference mode
            for static, value in zip(self.inputs, args):
                static[:n].copy_(value)
            self.graph.replay()
            if isinstance(self.outputs, torch.Tensor):
                return self.outputs[:n].clone()
            return {k: v[:n].clone() for k, v in self.outputs.items()}


class CudaGraphsBackend(TorchBackend):
    """The torch backend on ``cuda:N`` whose template and search passes replay CUDA graphs captured in
    :meth:`warm_up`; shapes not warmed up run the network eagerly."""

    def __init__(self, net: AlphaRefineNet, device: torch.device, precision: str = "fp16", channels_last: bool = True,
                 fold_batchnorm: bool = True, meta: Optional[Dict[str, Any]] = None, precision_note: str = "",
                 max_graph_batch: int = MAX_GRAPH_BATCH, warmup: int = WARMUP_PASSES) -> None:
        super().__init__(net, pinned(device), precision, channels_last=channels_last, fold_batchnorm=fold_batchnorm,
                         meta=meta, precision_note=precision_note)
        self.sizes = capture_sizes(max_graph_batch)
        self.warmup = int(warmup)
        self._graphs: Dict[Key, _Graph] = {}
        self._pool: Optional[Any] = None
        self.eager_calls: Dict[Key, int] = {}   # calls that found no graph, by (batch size, mode)

    @property
    def captured(self) -> List[Key]:
        """The (capture size, mode) graphs captured so far."""
        return sorted(self._graphs, key=repr)

    # ------------------------------------------------------------------ calls
    def template(self, images: torch.Tensor) -> torch.Tensor:
        graph = self._graph(images.shape[0], TEMPLATE)
        if graph is None:
            self._eager((images.shape[0], TEMPLATE))
            return self.net.template(images)
        with torch.cuda.device(self.device):
            return graph.replay(images)

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        mode = mode_of(with_mask, mask_logits)
        graph = self._graph(images.shape[0], mode)
        if graph is None:
            self._eager((images.shape[0], mode))
            return self.net.search(images, kernels, with_mask=mode[0], mask_logits=mode[1])
        with torch.cuda.device(self.device):
            return graph.replay(images, kernels)

    def _graph(self, n: int, mode: Tuple) -> Optional[_Graph]:
        """The graph that holds ``n`` rows in ``mode``, if one was captured."""
        size = bucket(n, self.sizes)
        return None if size is None else self._graphs.get((size, mode))

    def _eager(self, key: Key) -> None:
        self.eager_calls[key] = self.eager_calls.get(key, 0) + 1

    # ------------------------------------------------------------------ capture
    def warm_up(self, batch_sizes: Sequence[int], with_mask: bool) -> None:
        """Capture the template and search graphs of every capture size these batches pad to (see the
        module docstring for the modes), the ones not captured yet; cuDNN picks its fastest algorithms
        for each (``benchmark`` on during the warm-up passes only)."""
        todo = [k for k in graph_keys(batch_sizes, with_mask, self.sizes, self.mask_logits)
                if k not in self._graphs]
        if not todo:
            return
        size_px = self.config.input_size
        benchmark = torch.backends.cudnn.benchmark  # only this flag: cudnn.flags() would reset allow_tf32 too
        torch.backends.cudnn.benchmark = True
        try:
            with torch.cuda.device(self.device), torch.inference_mode():
                for size, mode in todo:
                    self._graphs[(size, mode)] = self._capture_mode(size, mode, size_px)
            torch.cuda.synchronize(self.device)
        finally:
            torch.backends.cudnn.benchmark = benchmark

    def _capture_mode(self, size: int, mode: Tuple, size_px: int) -> _Graph:
        images = torch.zeros(size, 3, size_px, size_px, device=self.device, dtype=self.input_dtype)
        images = images.contiguous(memory_format=self.memory_format)
        if mode == TEMPLATE:
            return self._capture(lambda x: self.net.template(x), (images,))
        kernels = self.net.template(images)
        return self._capture(lambda x, k: self.net.search(x, k, with_mask=mode[0], mask_logits=mode[1]),
                             (images, kernels))

    def _capture(self, fn, inputs: Tuple[torch.Tensor, ...]) -> _Graph:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*inputs)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (a second refiner in the process) does not break it
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = fn(*inputs)
        return _Graph(inputs, graph, outputs)

    def close(self) -> None:
        """Drop the graphs and their pool (the network stays usable, eagerly)."""
        if self._graphs:
            torch.cuda.synchronize(self.device)
        self._graphs.clear()
        self._pool = None


