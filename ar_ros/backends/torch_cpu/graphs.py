"""CPU searches as traced, frozen TorchScript graphs whose layers oneDNN Graph compiles and fuses.

Eager PyTorch pays Python and per-operator dispatch at every layer; the refiner's search crops are small
(128 px: often less arithmetic per layer than that overhead). oneDNN Graph compiles each fused partition of
a frozen graph (convolution + bias + activation + residual chains) once and then only executes it (the
measured gain is in docs/performance.md).

oneDNN Graph compiles for static shapes, so there is one graph per batch size and kind (box, box + mask).
Graphs are built only when asked (:meth:`SearchGraphs.build`, which the backend's ``warm_up`` calls for
the batch sizes that can occur), in the caller's thread, never behind its back; a shape without a graph
runs the eager network. Each frozen graph keeps its own copy of the weights, so there are at most
``max_graphs`` of them, fewer where the weights are large (:data:`GRAPH_MEMORY`).

oneDNN Graph crashes the process (SIGSEGV, torch 2.13) on a sum of two maps in different memory layouts:
``model.heads.upsample2`` returns its map in the layout of the one it is added to, and
``test/test_graphs.py`` builds every backbone and decoder's graphs in a subprocess. The fusion flag is
process-wide: it is switched on only while a graph is traced and compiled, then put back as it was.
TorchScript is deprecated in torch 2.13; where it goes, tracing fails and the eager network runs.
"""
from __future__ import annotations

import warnings
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ...model.network import AlphaRefineNet, SearchTensors

MAX_GRAPHS = 16   # shapes (batch sizes x kinds) with a graph; further shapes run eager
GRAPH_SIZES = (1, 2, 4, 8, 16, 32)  # batch sizes that get a graph; a batch runs the smallest one that holds it
GRAPH_MEMORY = 256 * 2 ** 20  # bytes of weights all graphs may hold (each frozen graph keeps its own copy)


def graphs_available() -> bool:
    """Whether this torch can fuse TorchScript graphs with oneDNN."""
    return hasattr(torch.jit, "enable_onednn_fusion") and torch.backends.mkldnn.is_available()


def trace_search(net: AlphaRefineNet, images: torch.Tensor, kernels: torch.Tensor,
                 with_mask: bool = False) -> Tuple[torch.jit.ScriptModule, Tuple[str, ...]]:
    """Trace, freeze and compile ``net``'s search for this shape; returns the graph and its output names."""
    was_on = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # our sizes are ints on purpose (constants in a graph): the tracer's warning about them is noise
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            wrapper = SearchTensors(net, with_mask).eval()
            traced = torch.jit.trace(wrapper, (images, kernels), check_trace=False)
            graph = torch.jit.freeze(traced)
            for _ in range(2):  # profiling run, then oneDNN Graph compiles and runs the fused partitions
                graph(images, kernels)
    finally:
        torch.jit.enable_onednn_fusion(was_on)
    return graph, wrapper.output_names


class SearchGraphs:
    """Graphs of ``plain``'s search by input shape and kind (see the module docstring). ``plain`` is the
    network with ordinary convolutions (what the graph fuser understands)."""

    def __init__(self, plain: AlphaRefineNet, max_graphs: int = MAX_GRAPHS) -> None:
        self.plain: Optional[AlphaRefineNet] = plain
        weights = sum(t.numel() * t.element_size() for t in plain.state_dict().values())
        self.max_graphs = max(1, min(int(max_graphs), GRAPH_MEMORY // max(weights, 1)))
        self.graphs: Dict[Tuple, Tuple[torch.jit.ScriptModule, Tuple[str, ...]]] = {}
        self.sizes: List[int] = []  # batch sizes with a graph, ascending (kept with ``graphs``, read per search)
        self.failure = ""  # why the last graph could not be built or run ('' = none failed)

    @staticmethod
    def key(images: torch.Tensor, kernels: torch.Tensor, with_mask: bool, batch: Optional[int] = None) -> Tuple:
        """A graph's key: the input shapes (with the batch size ``batch`` when given), dtypes and kind."""
        n = images.shape[0] if batch is None else batch
        return (n, *images.shape[1:]), (n, *kernels.shape[1:]), images.dtype, kernels.dtype, bool(with_mask)

    def build(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False) -> bool:
        """Build this shape's graph now (a no-op where it exists); False when there is no room left or
        tracing failed (:attr:`failure` says why): that shape then runs eager."""
        key = self.key(images, kernels, with_mask)
        if key in self.graphs:
            return True
        if self.plain is None or len(self.graphs) >= self.max_graphs:
            self.failure = f"no room for another graph (at most {self.max_graphs} for these weights)"
            return False
        try:
            self.graphs[key] = trace_search(self.plain, images, kernels, with_mask)
        except Exception as err:  # noqa: BLE001 - tracing can fail in many ways; any of them means: run eager
            self.failure = f"{type(err).__name__}: {err}"
            return False
        self._index()
        return True

    def _index(self) -> None:
        """:attr:`sizes` from the graphs held, sorted here once rather than on every search."""
        self.sizes = sorted({k[0][0] for k in self.graphs})

    def release(self) -> None:
        """Build nothing more: the plain network's weights are let go (the graphs keep their own)."""
        self.plain = None

    def search(self, images: torch.Tensor, kernels: torch.Tensor,
               with_mask: bool = False) -> Optional[Dict[str, torch.Tensor]]:
        """The outputs of the smallest graph that holds this batch (padded with zero crops up to its size and
        cut back: the rows are independent), or None where there is none (the eager network runs)."""
        n = images.shape[0]
        size = next((b for b in self.sizes if b >= n and self.key(images, kernels, with_mask, b) in self.graphs),
                    None)
        if size is None:
            return None
        key = self.key(images, kernels, with_mask, size)
        graph, names = self.graphs[key]
        if size > n:
            images = torch.cat([images, images.new_zeros((size - n, *images.shape[1:]))])
            kernels = torch.cat([kernels, kernels.new_zeros((size - n, *kernels.shape[1:]))])
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            outputs = graph(images, kernels)
        except RuntimeError as err:  # e.g. an input this graph was not compiled for: eager from now on
            self.failure = f"{type(err).__name__}: {err}"
            del self.graphs[key]
            self._index()
            return None
        return {name: out[:n] for name, out in zip(names, outputs)}


def graph_sizes(batch_sizes: Iterable[int]) -> List[int]:
    """The graph sizes (:data:`GRAPH_SIZES`) that hold these batch sizes; beyond the largest, eager."""
    return sorted({next((g for g in GRAPH_SIZES if g >= n), 0) for n in batch_sizes} - {0})
