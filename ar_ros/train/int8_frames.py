"""Calibration crops for int8 quantisation (``backends.onnx_export.quantize_int8`` takes them as an argument)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from ..backends.onnx import OnnxRuntimeBackend
from .sampler import PairSampler, SamplerConfig, synthetic_pairs


def calibration_batches(model_dir: Union[str, Path], n_batches: int = 16, batch: int = 4, seed: int = 0) -> list:
    """(images, kernels) batches from synthetic training-style pairs, kernels from the fp32 template graph."""
    backend = OnnxRuntimeBackend(model_dir)
    sampler = PairSampler(synthetic_pairs(seed_range=(91_000, 94_000)),
                          SamplerConfig(input_size=backend.config.input_size, gray_prob=0.0, brightness=0.0))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        b = sampler.batch(rng, batch)
        kernels = backend.template(b["template"]).numpy()
        out.append((np.ascontiguousarray(b["search"].numpy()), kernels))
    return out
