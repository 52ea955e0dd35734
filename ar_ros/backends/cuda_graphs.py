"""CUDA graphs for the torch backend: each search pass shape captured once, then replayed in one launch.

On a GPU, refining one target runs about sixty small kernels, and launching them one by one from Python
takes longer than running them. A captured graph replays the whole pass with one launch. A graph has
fixed shapes, so one is captured per (batch size, mask) the first time that shape is refined, up to
``max_graph_batch`` targets (larger batches run eagerly). All graphs share one memory pool.

The outputs of a replay live in the graph's static buffers and are overwritten by the next replay of the
same shape: the Refiner copies them to the host at once.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from ..model import AlphaRefineNet
from .torch_eager import TorchBackend


class GraphedSearch:
    """Wraps a network on a CUDA device: ``template`` runs eagerly, ``search`` replays captured graphs."""

    def __init__(self, net: AlphaRefineNet, max_graph_batch: int = 32, warmup: int = 3) -> None:
        device = next(net.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the network on a CUDA device, not {device}")
        self.net = net
        self.config = net.config
        self.max_graph_batch = int(max_graph_batch)
        self.warmup = int(warmup)
        self._graphs: Dict[Tuple[int, bool], tuple] = {}
        self._pool = None

    def template(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.template(images)

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False) -> Dict[str, torch.Tensor]:
        key = (images.shape[0], bool(with_mask))
        if key[0] > self.max_graph_batch:
            return self.net.search(images, kernels, with_mask=with_mask)
        if key not in self._graphs:
            self._graphs[key] = self._capture(images, kernels, with_mask)
        static_images, static_kernels, graph, outputs = self._graphs[key]
        static_images.copy_(images)
        static_kernels.copy_(kernels)
        graph.replay()
        return outputs

    @property
    def captured(self) -> list:
        """The (batch size, mask) shapes captured so far."""
        return sorted(self._graphs)

    def _capture(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool) -> tuple:
        static_images = images.clone()  # keeps channels_last
        static_kernels = kernels.clone()
        # warm-up on a side stream (cuDNN picks its algorithms, lazy initialisation happens) before capture
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.net.search(static_images, static_kernels, with_mask=with_mask)
        torch.cuda.current_stream(images.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.net.search(static_images, static_kernels, with_mask=with_mask)
        return static_images, static_kernels, graph, outputs


class CudaGraphsBackend(TorchBackend):
    """The torch backend on CUDA with its searches replayed from CUDA graphs (:class:`GraphedSearch`)."""

    def prepare(self, net: nn.Module) -> nn.Module:
        net = super().prepare(net)
        self.graphed = GraphedSearch(net)
        return net

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        if mask_logits:
            return self.net.search(images, kernels, with_mask=with_mask, mask_logits=True)
        return self.graphed.search(images, kernels, with_mask)
