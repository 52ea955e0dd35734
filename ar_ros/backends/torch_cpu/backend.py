"""The torch backend tuned for CPUs: packed oneDNN convolutions (fp32 or bf16) and oneDNN Graph graphs."""
from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, Optional, Sequence

import torch

from ...model import AlphaRefineNet
from ..torch_eager import TorchBackend
from .bf16 import to_bf16, to_bf16_plain
from .graphs import SearchGraphs, graph_sizes, graphs_available
from .packing import is_prepared, pack_fp32


class TorchCpuBackend(TorchBackend):
    """torch on CPU, channels_last, BatchNorm folded: fp32 with every convolution packed for oneDNN
    (:mod:`.packing`), or bf16 (:mod:`.bf16`). With ``graphs``, :meth:`warm_up` builds oneDNN Graph graphs
    for batch sizes 1, 2, 4, 8, ... up to what can occur (:mod:`.graphs`); a batch runs the smallest graph
    that holds it, padded; larger batches run the packed network. bf16 graphs compute boxes only: a bf16 search with a mask takes the mask from the
    packed network and the boxes from the graph, so asking for masks does not move the boxes."""

    def __init__(self, net: AlphaRefineNet, precision: str = "fp32", graphs: bool = True,
                 meta: Optional[Dict[str, Any]] = None, precision_note: str = "") -> None:
        self.graphs: Optional[SearchGraphs] = None
        self.use_graphs = graphs and graphs_available() and not is_prepared(net)
        super().__init__(net, torch.device("cpu"), precision, channels_last=True, fold_batchnorm=True, meta=meta,
                         precision_note=precision_note)

    def prepare(self, net: AlphaRefineNet) -> AlphaRefineNet:
        net = net.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # not in torch's stubs
        if self.precision == "bf16":
            plain = to_bf16_plain(net) if self.use_graphs else None
            net = to_bf16(net)
        else:
            net = net.float()
            plain = net if self.use_graphs else None
            if not is_prepared(net):
                try:  # on a copy, so a failure keeps the plain network running
                    net = pack_fp32(copy.deepcopy(net))
                except (RuntimeError, ValueError, TypeError, AttributeError) as err:
                    warnings.warn(f"fp32 convolutions not packed, eager torch runs them: {err}")
        if plain is not None:
            self.graphs = SearchGraphs(plain)
        return net

    def search(self, images: torch.Tensor, kernels: torch.Tensor, with_mask: bool = False,
               mask_logits: bool = False) -> Dict[str, torch.Tensor]:
        if self.graphs is None or mask_logits:
            return self.net.search(images, kernels, with_mask=with_mask, mask_logits=mask_logits)
        graphed_mask = with_mask and self.precision == "fp32"
        out = self.graphs.search(images, kernels, graphed_mask)
        if out is not None and graphed_mask == with_mask:
            return out
        eager = self.net.search(images, kernels, with_mask=with_mask)
        if out is not None:  # bf16 with a mask: the box graph's boxes (the two paths differ by ~0.2 px)
            eager.update({k: v for k, v in out.items() if k != "mask"})
        return eager

    def warm_up(self, batch_sizes: Sequence[int], with_mask: bool) -> None:
        """Build the graphs that hold these batch sizes (1, 2, 4, 8, ...: a batch of 3 runs the graph of 4; box +
        mask ones with ``with_mask`` in fp32), at most as many as fit (:class:`~.graphs.SearchGraphs`; the
        plain network is let go once they are full)."""
        if self.graphs is None:
            return
        size = self.config.input_size
        with torch.inference_mode():
            for n in graph_sizes(int(b) for b in batch_sizes):
                images = torch.zeros(n, 3, size, size, dtype=self.input_dtype).to(memory_format=self.memory_format)
                if not self.graphs.build(images, self.net.template(images), with_mask and self.precision == "fp32"):
                    break
        if len(self.graphs.graphs) >= self.graphs.max_graphs:
            self.graphs.release()

    def close(self) -> None:
        if self.graphs is not None:
            self.graphs.release()
