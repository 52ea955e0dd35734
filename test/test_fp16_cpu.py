"""fp16 numerics on CPU with the shipped weights: the GPU path's layer choice, checked without a GPU.

torch runs float16 convolutions on CPU, rounding every layer's output to fp16 as a GPU does, so the boxes
of ``backends.half.to_fp16`` here are what fp16 on CUDA gives up to the summation order. Crops are real-ish:
synthetic sequence frames (the GPU check's scenes, ``SCENE_SEED``..), cut by ``engine.crop`` around the
coarse-tracker jitter of the ground truth, as the Refiner cuts them.
"""
import copy
import math

import numpy as np
import pytest
import torch

from ar_ros.backends.fp32_layers import Float32, fp32_convolutions, score_convolutions
from ar_ros.backends.half import all_fp16, to_fp16
from ar_ros.data.base_trackers import jitter
from ar_ros.data.synthetic import Sequence
from ar_ros.engine import crop as cropping
from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.model import load_network
from ar_ros.model.fuse import fold_batchnorm

BOUND_PX = 0.3   # frame px, the GPU check's fp16-vs-fp32 tolerance (benchmarks/gpu_check.py REDUCED)
MASK_BOUND = 0.05
SCENES = 12      # sequences 4242..4253: frame 0 -> template, frame 6 jittered -> search


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    net = load_network(DEFAULT_CHECKPOINT)[0].eval()
    fold_batchnorm(net)  # as every backend runs it
    return net


@pytest.fixture(scope="module")
def crops(shipped):
    cfg, table = shipped.config, cropping.normalisation_table()
    rng = np.random.default_rng(0)

    def normalised(patches):
        p = np.stack(patches).astype(np.int64)
        return torch.from_numpy(np.stack([table[c][p[..., c]] for c in range(3)], axis=1))

    templates, searches, windows = [], [], []
    for s in range(SCENES):
        seq = Sequence(seed=4242 + s, length=8)
        first, later = seq[0], seq[6]
        win = cropping.window_for(first.box, cfg.search_factor, cfg.input_size, cfg.crop_mode)
        templates.append(cropping.crop(first.image, win))
        win = cropping.window_for(jitter(later.box, rng), cfg.search_factor, cfg.input_size, cfg.crop_mode)
        searches.append(cropping.crop(later.image, win))
        windows.append(win)
    return normalised(templates), normalised(searches), windows


def run(net, crops, dtype):
    """Frame-px x,y,w,h boxes and mask probabilities of ``net`` on the crops in ``dtype``."""
    templates, searches, windows = crops
    with torch.inference_mode():
        out = net.search(searches.to(dtype), net.template(templates.to(dtype)), with_mask=True)
    boxes = out["boxes"].float().numpy()
    return np.stack([w.box_to_frame(boxes[i]) for i, w in enumerate(windows)]), out["mask"].float().numpy()


@pytest.fixture(scope="module")
def reference(shipped, crops):
    return run(shipped, crops, torch.float32)


def test_fp16_keeps_boxes_within_the_gpu_checks_bound_of_fp32(shipped, crops, reference):
    half = to_fp16(copy.deepcopy(shipped))
    boxes, masks = run(half, crops, torch.float16)
    assert next(p.dtype for p in half.neck.parameters()) == torch.float16  # the bulk really is fp16
    err = np.abs(boxes - reference[0])
    assert np.isfinite(boxes).all()
    assert err.max() <= BOUND_PX, f"fp16 boxes moved up to {err.max():.3f} px (bound {BOUND_PX})"
    assert np.abs(masks - reference[1]).max() <= MASK_BOUND


def test_every_layer_in_fp16_misses_that_bound(shipped, crops, reference):
    boxes, _ = run(all_fp16(copy.deepcopy(shipped)), crops, torch.float16)
    err = np.abs(boxes - reference[0])
    assert err.max() > BOUND_PX, f"all-fp16 boxes within {err.max():.3f} px: the crops no longer tell"


def test_the_fp32_layers_are_the_score_maps_the_wide_layers_and_the_stem(shipped):
    net = copy.deepcopy(shipped)
    names = {m: n for n, m in net.named_modules()}
    kept = sorted(names[m] for m in fp32_convolutions(net, stem=True))
    assert {names[m] for m in score_convolutions(net.corner_head)} == {
        "corner_head.conv5_tl", "corner_head.conv5_br", "corner_head.fine_tl.out", "corner_head.fine_br.out"}
    # the shipped model's BatchNorms with near-zero variance (|w| 95 and 127, |b| 2e3 after folding) and
    # its stem (the first conv is also the first of the backbone's int8_fp32_convs)
    assert {"feature_extractor.features.1.conv.0", "feature_extractor.features.2.conv.0",
            "feature_extractor.features.0.0"} <= set(kept)
    assert len(kept) < 12  # a handful, not the network
    to_fp16(net)
    wrapped = [m for m in net.modules() if isinstance(m, Float32)]
    assert len(wrapped) == len(kept)
    assert all(m.module.weight.dtype == torch.float32 for m in wrapped)
    # score maps come out in fp32 (the soft-argmax's input); the others go back to fp16
    assert sorted(m.out_dtype is None for m in wrapped).count(True) == 4
    # the fp32 layers keep their weights unrounded
    originals = dict(shipped.named_parameters())
    for name, p in net.named_parameters():
        if ".module." in name:
            assert torch.equal(p, originals[name.replace(".module.", ".")])


def test_score_maps_only_keeps_four_layers(shipped):
    """``weight_limit=inf, stem=False`` keeps only the score maps in fp32."""
    net = to_fp16(copy.deepcopy(shipped), weight_limit=math.inf, stem=False)
    assert sum(isinstance(m, Float32) for m in net.modules()) == 4


def test_a_refiner_takes_fp16_on_cpu_and_refines_like_fp32(frame):
    """``precision="fp16"`` with ``device="cpu"`` (never chosen by ``auto``) runs the GPU's layer choice."""
    from ar_ros import Refiner
    torch.set_num_threads(1)
    half, full = (Refiner(device="cpu", precision=p) for p in ("fp16", "fp32"))
    assert half.dtype == torch.float16 and half.runner.precision == "fp16"
    assert sum(isinstance(m, Float32) for m in half.net.modules()) >= 5
    assert Refiner(device="cpu").dtype != torch.float16  # auto on CPU never picks fp16
    box = (200.0, 150.0, 120.0, 90.0)
    results = []
    for r in (half, full):
        r.set_target(frame, box)
        results.append(r.refine(frame, {"0": (205.0, 146.0, 112.0, 96.0)})["0"])
    assert np.abs(np.subtract(results[0].raw_box, results[1].raw_box)).max() <= BOUND_PX
