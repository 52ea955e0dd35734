"""CPU searches as traced, frozen TorchScript graphs whose layers oneDNN Graph compiles and fuses.

Eager PyTorch pays Python and per-operator dispatch (oneDNN primitive look-up, memory descriptors) at
every layer; the refiner's search crops are small (128 px: a few hundred microseconds of arithmetic per
layer, often less than that overhead). oneDNN Graph compiles each fused partition of a frozen graph
(convolution + bias + activation + residual chains) once and then only executes it. Measured here
(``benchmarks/bench_backends.py``, 2 threads, one target, torch/fp32 vs torch/fp32-eager in one run): the
shipped model's refinement takes 0.53-0.62x the eager (packed) time, the first ResNet-18 default's box
0.73-0.84x.

One graph per input shape and kind (oneDNN Graph compiles for static shapes), traced once a shape has
been searched ``after`` times (a few eager calls first, so a short run or a test never pays for tracing)
in a thread of its own while the eager network goes on refining (0.6-0.7 s for the shipped model here,
seconds for the authors' ResNet-34 at 256 px), then kept, up to ``max_graphs`` and a weight budget;
beyond that, or if tracing fails, the eager network runs (``failure`` says why).

oneDNN Graph crashes the process (SIGSEGV, torch 2.13) on a sum of two maps in different memory layouts,
which the mask decoder had (an upsampled map plus a convolution's output): ``heads.upsample2`` returns
its map in the layout of the one it is added to; ``test/test_graphs.py`` builds every backbone and
decoder's graphs in a subprocess. oneDNN Graph is switched on only while a graph is traced and compiled
(one at a time in the process), and put back as it was: a compiled graph keeps its fused plan. The flag
is process-wide, so a TorchScript graph that another thread of the process optimises during those
0.6 s is fused too; after them, the process's other graphs are left alone. While a graph compiles, the
stream goes on eager but slower (the two share the cores: about 1.7x an eager frame here). TorchScript
is deprecated in torch 2.13; where it goes, tracing fails and eager runs. ``AR_ROS_NO_GRAPHS=1`` in the
environment turns graphs off (the eager path then runs everywhere).
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..model.network import SearchTensors

GRAPH_AFTER = 3   # eager searches of a shape before its graph is traced (the refiner's default)
MAX_GRAPHS = 16   # shapes (batch sizes x kinds) with a graph; further shapes run eager
GRAPH_MEMORY = 256 * 2 ** 20  # bytes of weights all graphs may hold (each frozen graph keeps its own copy)
_FUSION = threading.Lock()  # the fusion flag is process-wide: one graph compiles at a time, flag restored
# our sizes are ints on purpose (constants in a graph): the tracer's warning about them is noise. A filter,
# not catch_warnings, which is process-wide and not thread-safe (graphs are traced in a thread of their own)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"ar_ros\.")


def graphs_available() -> bool:
    """Whether this torch can fuse TorchScript graphs with oneDNN (and ``AR_ROS_NO_GRAPHS`` is not set)."""
    if os.environ.get("AR_ROS_NO_GRAPHS", "") not in ("", "0"):
        return False
    return hasattr(torch.jit, "enable_onednn_fusion") and torch.backends.mkldnn.is_available()


def trace_search(net: nn.Module, images: torch.Tensor, kernels: torch.Tensor,
                 with_mask: bool = False) -> Tuple[torch.jit.ScriptModule, Tuple[torch.Tensor, ...]]:
    """Trace, freeze and compile ``net``'s search for this shape; returns the graph and its first outputs."""
    with _FUSION:
        was_on = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            with torch.inference_mode():
                traced = torch.jit.trace(SearchTensors(net, with_mask).eval(), (images, kernels), check_trace=False)
                graph = torch.jit.freeze(traced)
                for _ in range(2):  # profiling run, then oneDNN Graph compiles and runs the fused partitions
                    outputs = graph(images, kernels)
        finally:
            torch.jit.enable_onednn_fusion(was_on)
    return graph, outputs


class SearchGraphs:
    """Graphs of ``plain``'s search by shape and kind (box, box + mask; see the module docstring);
    :meth:`search` runs one or says there is none (None: run the eager network). ``plain`` is the
    network with ordinary convolutions (what the graph fuser understands).

    With ``background`` the graphs are traced and compiled in a thread of their own, one after another,
    while the eager network keeps refining, so a new batch size never stops a stream; :meth:`wait` waits
    until every shape asked for so far has its graph, :meth:`close` drops the queue. At most ``max_graphs``
    graphs, fewer where the weights are large: each graph holds a copy of them, and all together at most
    :data:`GRAPH_MEMORY` bytes (the shipped model: 16; the authors' ResNet-34: 2).
    """

    def __init__(self, plain: nn.Module, after: int = GRAPH_AFTER, max_graphs: int = MAX_GRAPHS,
                 background: bool = True) -> None:
        self.plain: Optional[nn.Module] = plain
        weights = sum(t.numel() * t.element_size() for t in plain.state_dict().values())
        self.after = max(int(after), 1)
        self.max_graphs = max(1, min(int(max_graphs), GRAPH_MEMORY // max(weights, 1)))
        self.background = background
        self.graphs: Dict[tuple, Optional[torch.jit.ScriptModule]] = {}
        self.seen: Dict[tuple, int] = {}
        self.pending: Dict[tuple, tuple] = {}  # shapes to build: copies of their inputs
        self.building: Optional[threading.Thread] = None
        self.closed = False
        self._lock = threading.Lock()
        self.failure = ""  # why the last graph could not be built or run ('' = none failed)

    def search(self, images: torch.Tensor, kernels: torch.Tensor,
               with_mask: bool = False) -> Optional[Dict[str, torch.Tensor]]:
        """``boxes``, ``score`` (and with ``with_mask`` the ``mask``) from this shape's graph, or None
        where there is none yet (or ever: the eager network runs)."""
        key = (tuple(images.shape), tuple(kernels.shape), images.dtype, kernels.dtype, bool(with_mask))
        graph = self.graphs.get(key)
        if graph is None:
            # neither built nor failed: count it, maybe build it (its outputs when built here and now)
            outputs = None if key in self.graphs else self._count(key, images, kernels, with_mask)
            return None if outputs is None else dict(zip(("boxes", "score", "mask"), outputs))
        try:
            outputs = graph(images, kernels)
        except Exception as err:  # noqa: BLE001 - e.g. an input this graph was not compiled for: eager
            self.failure = f"{type(err).__name__}: {err}"
            self.graphs[key] = None
            return None
        return dict(zip(("boxes", "score", "mask"), outputs))

    def wait(self, timeout: Optional[float] = None) -> None:
        """Until every shape asked for so far has its graph (or failed), or ``timeout`` seconds."""
        thread = self.building
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Build nothing more: the queue is dropped (a build under way finishes, its graph is kept) and the
        plain network let go once no build needs it. Searches go on with the graphs there are."""
        with self._lock:
            self.closed = True
            self.pending.clear()
            if self.building is None:
                self.plain = None

    def _count(self, key: tuple, images: torch.Tensor, kernels: torch.Tensor,
               with_mask: bool) -> Optional[Tuple[torch.Tensor, ...]]:
        with self._lock:
            if key in self.pending or key in self.graphs or self.closed:
                return None
            if self.plain is None or len(self.graphs) + len(self.pending) >= self.max_graphs:
                if self.building is None:
                    self.plain = None  # no further graph: the plain network's weights are not needed any more
                return None
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < self.after:
                return None
            if not self.background:
                outputs = self._build(key, images, kernels, with_mask)  # under the lock: one build at a time
                self.graphs[key] = outputs[0] if outputs else None
                return outputs[1] if outputs else None
            self.pending[key] = (images.clone(), kernels.clone(), with_mask)  # copies: the caller reuses its own
            if self.building is None:
                # not a daemon (a thread inherits it from its creator, e.g. a node's daemon worker): an
                # interpreter that exits waits for the builds instead of stopping one inside torch (abort).
                # Started under the lock, so the thread cannot finish before ``building`` names it.
                thread = threading.Thread(target=self._build_pending, name="ar_ros-graphs", daemon=False)
                try:
                    thread.start()
                except RuntimeError as err:  # no thread to be had (limits, interpreter shutdown): eager
                    del self.pending[key]
                    self.failure = f"{type(err).__name__}: {err}"
                    return None
                self.building = thread
            return None

    def _build_pending(self) -> None:
        while True:
            with self._lock:
                if not self.pending:
                    self.building = None
                    if self.closed or len(self.graphs) >= self.max_graphs:
                        self.plain = None
                    return
                key, (images, kernels, with_mask) = next(iter(self.pending.items()))
            built = self._build(key, images, kernels, with_mask)
            with self._lock:  # published and dequeued at once: a caller never sees the shape in neither
                self.graphs[key] = built[0] if built else None
                self.pending.pop(key, None)

    def _build(self, key: tuple, images: torch.Tensor, kernels: torch.Tensor,
               with_mask: bool) -> Optional[tuple]:
        """(graph, its first outputs), or None where it cannot be built (``failure`` says why)."""
        try:
            return trace_search(self.plain, images, kernels, with_mask)
        except Exception as err:  # noqa: BLE001 - any failure means: run eager
            self.failure = f"{type(err).__name__}: {err}"
            return None
