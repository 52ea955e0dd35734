#!/usr/bin/env python3
"""The GPU check: environment, CUDA parity checks and GPU benchmarks in one run, for a bare GPU machine.

Run through ``tools/gpu_check.sh [--dry-run]`` or ``make gpu-check PY=python3`` (``PY`` = the Python,
``OUT`` = the results folder). Needs only torch, numpy and opencv; onnxruntime, onnx, matplotlib, pytest
and tensorrt are used when present, and every step that cannot run says why. In order:

1. the environment (GPU, torch / CUDA / cuDNN, ONNX Runtime providers);
2. the suite's CUDA tests (CUDA graphs, device crops, fp16), then parity checks, each a set of figures with
   a stated tolerance, on ``cuda:N`` (the last GPU): the device's crops vs OpenCV's; CUDA fp32 vs CPU fp32
   (same crops); fp16 vs fp32 (the shipped model within 0.3 px, the random-weight layout finite); CUDA
   graphs vs eager in fp32 and fp16, with no call running eagerly after ``warm_up`` and a batch over the
   largest capture size running eagerly; a batch of N targets vs N single calls for N in 1 / 8 / 32 and
   every precision (fp32, fp16, fp16 + graphs);
   ``refine_many`` over three cameras vs one call per camera; ONNX Runtime on CPU, with its CUDA provider,
   and with the node's defaults (device and precision auto); TensorRT with ``--tensorrt``;
3. benchmarks: torch fp32, fp16, fp16 + CUDA graphs x 1 / 8 / 32 targets x box / box+mask x the shipped
   model / the authors' 256 px ResNet-34 layout, median and p95 ms of Refiner.refine, and per
   configuration the GPU time of a pass (CUDA events) and the host's share per target, into
   ``OUT/gpu_check.json`` and ``OUT/gpu_check.png``; the goals (``GOALS``) are reported, they do not
   decide ``ok``.

The authors' layout has random weights; its BatchNorm statistics are measured on real-ish crops first
(:func:`calibrated`), so that its activations have a trained network's scale and fp16 does not overflow.

The last line printed is one JSON object with every median (ms) and every parity figure. A step that
breaks is recorded and the others still run; the exit status is 1 when any check failed or any step
broke. ``--dry-run`` runs the same on CPU with few iterations (CUDA-only steps: "skipped: no CUDA"; fp16
of the shipped model runs on CPU, which has the GPU's layer choice), to test this script in CI.

Parity checks run cuDNN convolutions in IEEE fp32 (torch lets them use TF32 on Ampere and newer by
default); ``cuda_fp32_tf32_vs_cpu_fp32`` reports what torch's default gives, for information. The fp32
benchmark runs with torch's defaults, as a user's Refiner does.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR] [--repeat N] [--targets 1,8,32] [--onnx DIR]
                                   [--tensorrt]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ar_ros import Refiner
from ar_ros.engine.boxes import clip_box
from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.data.base_trackers import jitter
from ar_ros.data.synthetic import Sequence
from ar_ros.eval.timing import interleaved
from ar_ros.model import AUTHORS_CONFIG, AlphaRefineNet, load_network
from bench_refiner import frame_and_boxes

ROOT = Path(__file__).resolve().parent.parent
SCENE_SEED = 4242  # synthetic sequences 4242.. : a textured target, well inside the frame on frames 0 and 6

# Tolerances, per figure: frame px for boxes, probability for masks and scores.
EXACT = {"box_px": 1e-3, "score": 1e-4, "mask": 1e-3}         # the same kernels replayed (CUDA graphs)
BATCH = {"box_px": 0.01, "score": 1e-4, "mask": 1e-3}         # other batch sizes: other summation orders
DEVICE = {"box_px": 0.02, "score": 1e-3, "mask": 1e-3}        # CPU vs CUDA, both IEEE fp32
REDUCED = {"box_px": 0.3, "score": 0.01, "mask": 0.05}        # fp16 / TF32 vs fp32 (the 0.3 px)
ONNX = {"box_px": 0.1, "score": 1e-3, "mask": 0.01}           # exported graphs vs torch (same device)
# Goals for fp16 + CUDA graphs (box_mode auto = fused for the shipped model): per refine call at 1 and 32
# targets, the GPU time of a 32-target pass and the host's work per target (CUDA-event split), and the
# paper's figure (AR34 c+m adds 5.1 ms per frame on an RTX 2080Ti) next to the same layout here.
GOALS = {"shipped/cuda-fp16-graphs/box/1": 0.5, "shipped/cuda-fp16-graphs/box/32": 1.5,
         "gpu_ms:shipped/cuda-fp16-graphs/box/32": 1.5, "host_ms_per_target:shipped/cuda-fp16-graphs/box/32": 0.05,
         "authors/cuda-fp16-graphs/box+mask/1": 5.1}


class Check:
    """Collects the run's results; ``summary()`` is the last line."""

    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out, self.dry_run = out, dry_run
        self.n = 2 if dry_run else 8          # targets per parity scene
        self.per_camera = 1 if dry_run else 3  # targets per camera in the refine_many check
        # why the CUDA-only steps do not run
        self.no_cuda = "skipped: dry run (CPU)" if torch.cuda.is_available() else "skipped: no CUDA"
        self.t0 = time.perf_counter()
        self.env: Dict = {}
        self.checks: Dict[str, str] = {}      # name -> "ok" | "FAIL: ..." | "info" | "skipped: ..." | "error: ..."
        self.parity: Dict[str, float] = {}    # name/figure -> value
        self.tolerances: Dict[str, float] = {}
        self.bench: Dict[str, Tuple[float, float]] = {}
        self.split: Dict[str, Dict] = {}      # benchmark -> GPU ms of a pass, host ms per target
        self.goals: Dict[str, Dict] = {}
        self.files: List[str] = []
        self.seconds: Dict[str, float] = {}   # step -> wall seconds

    def step(self, name: str, fn: Callable[[], None]) -> None:
        """Run one step; an exception is recorded as that step's error and the run goes on."""
        print(f"[gpu_check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one broken step must not cost the rest of a GPU run
            self.error(name, err)
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.save()

    def error(self, name: str, err: BaseException) -> None:
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:300]
        self.checks[name] = f"error: {type(err).__name__}: {first}"

    def figures(self, name: str, values: Dict[str, float], tol: Dict[str, float], info: bool = False) -> None:
        """Record a parity check: every figure that has a tolerance within it -> ok (figures without one are
        reported only; ``info``: the whole check is reported, never fails)."""
        bad = []
        for fig, value in values.items():
            self.parity[f"{name}/{fig}"] = _round(value)
            if fig in tol:
                self.tolerances[f"{name}/{fig}"] = tol[fig]
                if not value <= tol[fig]:  # NaN fails too
                    bad.append(f"{fig} {value:.3g} > {tol[fig]:g}")
        self.checks[name] = "info" if info else ("FAIL: " + ", ".join(bad) if bad else "ok")
        print(f"[gpu_check]   {name}: {self.checks[name]}  "
              + "  ".join(f"{k}={v:.3g}" for k, v in values.items()), flush=True)

    def skip(self, name: str, reason: str) -> None:
        self.checks[name] = reason if reason.startswith("skipped") else f"skipped: {reason}"
        print(f"[gpu_check]   {name}: {self.checks[name]}", flush=True)

    @property
    def ok(self) -> bool:
        return not any(s.startswith(("FAIL", "error")) for s in self.checks.values())

    def summary(self) -> Dict:
        return {"ok": self.ok, "dry_run": self.dry_run, "device": self.env.get("device"),
                "gpu": self.env.get("gpu"), "seconds": round(time.perf_counter() - self.t0, 1),
                "env": self.env, "checks": self.checks, "parity": self.parity,
                "median_ms": {k: _round(v[0]) for k, v in self.bench.items()}, "split": self.split,
                "goals": self.goals,
                "out": str(self.out)}

    def save(self) -> None:
        """Everything so far into OUT/gpu_check.json (rewritten after each step: a run cut short keeps it)."""
        full = dict(self.summary(), tolerances=self.tolerances, files=self.files, step_seconds=self.seconds,
                    benchmarks={k: {"median_ms": _round(m), "p95_ms": _round(p)} for k, (m, p) in self.bench.items()})
        (self.out / "gpu_check.json").write_text(json.dumps(full, indent=1, allow_nan=False))


def _round(v: float) -> Optional[float]:
    """Four significant digits; NaN / inf -> None (null in JSON, which has no NaN)."""
    return float(f"{v:.4g}") if math.isfinite(v) else None


# ------------------------------------------------------------------ environment
def environment(dry_run: bool) -> Dict:
    cuda = torch.cuda.is_available() and not dry_run
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
           "cuda_available": torch.cuda.is_available(), "device": "cuda" if cuda else "cpu",
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "gpu": None}
    import cv2
    env["opencv"] = cv2.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), gpu_count=torch.cuda.device_count())
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        env["nvidia_driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    try:
        import onnxruntime as ort
        ort.set_default_logger_severity(3)  # errors only: its warnings would land after the last line
        env.update(onnxruntime=ort.__version__, onnxruntime_providers=ort.get_available_providers())
    except ImportError:
        env.update(onnxruntime=None, onnxruntime_providers=[])
    for name in ("onnx", "tensorrt", "matplotlib", "pytest"):
        env[name] = _version(name)
    return env


def _version(module: str) -> Optional[str]:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "present")
    except Exception as err:  # noqa: BLE001 - a broken install is reported, not fatal
        return f"broken ({type(err).__name__})"


# ------------------------------------------------------------------ scenes and comparisons
def scene(n: int, camera: int = 0) -> Tuple[np.ndarray, np.ndarray, Dict, Dict]:
    """Template frame, later frame, and ``n`` targets on the same object: per-target jittered template
    boxes on frame 0 and jittered base boxes (the paper's coarse-tracker jitter) on frame 6."""
    seq = Sequence(seed=SCENE_SEED + camera, length=8)
    first, later = seq[0], seq[6]
    rng = np.random.default_rng(camera)
    h, w = first.image.shape[:2]
    templates = {f"t{i}": clip_box(jitter(first.box, rng, 0.05, 0.05), w, h, 8.0) for i in range(n)}
    bases = {f"t{i}": clip_box(jitter(later.box, rng), w, h, 8.0) for i in range(n)}
    return first.image, later.image, templates, bases


def differences(a: Dict, b: Dict) -> Dict[str, float]:
    """Largest |a - b| over the targets of two result dicts: raw boxes (frame px), scores, mask probabilities.
    NaN anywhere gives NaN (np.max propagates it), which fails any tolerance."""
    ids = list(a)
    out = {"box_px": np.max(np.abs(np.array([a[k].raw_box for k in ids]) - np.array([b[k].raw_box for k in ids]))),
           "score": np.max(np.abs(np.array([a[k].score - b[k].score for k in ids])))}
    if a[ids[0]].mask is not None:
        out["mask"] = np.max([np.max(np.abs(a[k].mask - b[k].mask)) for k in ids])
    return {k: float(v) for k, v in out.items()}


def worst(*diffs: Dict[str, float]) -> Dict[str, float]:
    """Per figure, the largest value over several comparisons (NaN wins: it must fail the check)."""
    keys = dict.fromkeys(k for d in diffs for k in d)
    return {k: max((d[k] for d in diffs if k in d), key=lambda v: math.inf if math.isnan(v) else v) for k in keys}


def run_scene(refiner: Refiner, n: int, mask: bool = True, camera: int = 0) -> Dict:
    first, later, templates, bases = scene(n, camera)
    refiner.clear()
    refiner.set_targets(first, templates)
    return refiner.refine(later, bases, mask=mask)


def nonfinite(results: Dict) -> float:
    """How many targets have a box or score that is not finite (fp16 overflow shows up here first)."""
    return float(sum(not (np.isfinite(r.raw_box).all() and math.isfinite(r.score)) for r in results.values()))


@contextlib.contextmanager
def ieee_fp32():
    """cuDNN convolutions in IEEE fp32 (torch's default lets them use TF32 on Ampere and newer GPUs)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def calibrated(net: AlphaRefineNet, batch: int = 4) -> AlphaRefineNet:
    """Random weights with BatchNorm statistics measured on real-ish crops (synthetic frames), in place.

    A randomly initialised network has identity BatchNorms, so activations grow layer after layer; the
    authors' layout then correlates features into values over 1e5, beyond fp16's 65504, and fp16 returns
    NaN boxes. With each BatchNorm's statistics measured on crops, activations have a trained network's
    scale, and fp16 and CUDA graphs are checked on a network that computes finite numbers.
    """
    from ar_ros.engine import crop as cropping
    table, size = cropping.normalisation_table(), net.config.input_size
    crops = []
    for i in range(batch):
        frame = Sequence(seed=SCENE_SEED + i, length=2)[0]
        win = cropping.window_for(frame.box, net.config.search_factor, size, net.config.crop_mode)
        patch = cropping.crop(frame.image, win).astype(np.int64)
        crops.append(np.stack([table[ch][patch[..., ch]] for ch in range(3)]))
    images = torch.from_numpy(np.stack(crops))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes below
        m.train()
    with torch.no_grad():
        net.search(images, net.template(images), with_mask=True)
    for m in norms:
        m.momentum = 0.1
    return net.eval()


def cuda_device() -> str:
    """``cuda:N`` of the last GPU (``cuda:0`` on a one-GPU machine): the explicit-index path is what runs."""
    return f"cuda:{torch.cuda.device_count() - 1}"


def device_crops(refiner: Refiner) -> Refiner:
    """``refiner`` (on CPU) cutting its crops as a CUDA refiner does (engine/device_crop.py), so that a
    CPU-vs-CUDA comparison sees the network's numerics only; the crops are checked on their own
    (:func:`check_device_crops`)."""
    from ar_ros.engine.device_crop import DeviceCropper
    runner = refiner.runner
    refiner._crops = DeviceCropper(runner.input_device, runner.input_dtype, runner.memory_format)
    return refiner


# ------------------------------------------------------------------ parity checks
def check_device_crops(c: Check, cuda: bool) -> None:
    """The crops a CUDA refiner cuts on the device vs OpenCV's (engine/crop.py) for the scene's windows, in
    uint8 levels: at most 1 level per pixel, under 0.1 on average (engine/device_crop.py)."""
    from ar_ros.engine import crop as cropping
    from ar_ros.engine.device_crop import DeviceCropper
    table = cropping.normalisation_table()
    step = table[:, 1] - table[:, 0]
    cropper = DeviceCropper(torch.device(cuda_device() if cuda else "cpu"))
    first, later, templates, bases = scene(c.n)
    for mode, size in (("exact", 256), ("clean", 128)):
        worst_level, mean_level = 0.0, 0.0
        for frame, boxes in ((first, templates), (later, bases)):
            windows = [cropping.window_for(b, 2.0, size, mode) for b in boxes.values()]
            ref = np.stack([cropping.crop(frame, w) for w in windows]).astype(np.float64)
            with torch.inference_mode():
                got = cropper(frame, windows, "rgb").permute(0, 2, 3, 1).float().cpu().numpy()
            diff = np.abs(np.round((got - table[:, 0]) / step) - ref)
            worst_level, mean_level = max(worst_level, float(diff.max())), max(mean_level, float(diff.mean()))
        c.figures(f"device_crops_vs_opencv/{mode}", {"max_levels": worst_level, "mean_levels": mean_level},
                  {"max_levels": 1.0, "mean_levels": 0.1})


def check_cuda_vs_cpu(c: Check, name: str, net: AlphaRefineNet, cuda: bool) -> None:
    """CUDA fp32 vs CPU fp32, the CPU refiner cutting the device's crops (:func:`device_crops`)."""
    if not cuda:
        c.skip(f"cuda_fp32_vs_cpu_fp32/{name}", c.no_cuda)
        c.skip(f"cuda_fp32_tf32_vs_cpu_fp32/{name}", c.no_cuda)
        return
    ref = run_scene(device_crops(Refiner(net, device="cpu", precision="fp32")), c.n)
    gpu = Refiner(net, device=cuda_device(), precision="fp32")
    with ieee_fp32():
        c.figures(f"cuda_fp32_vs_cpu_fp32/{name}", differences(ref, run_scene(gpu, c.n)), DEVICE)
    c.figures(f"cuda_fp32_tf32_vs_cpu_fp32/{name}", differences(ref, run_scene(gpu, c.n)), REDUCED, info=True)


def check_fp16(c: Check, name: str, net: AlphaRefineNet, cuda: bool) -> None:
    """fp16 vs fp32 on the same device: the shipped model within the 0.3 px bound; the random-weight layout
    reported, but its boxes must be finite (no fp16 overflow). The dry run runs fp16 on CPU (the same layer
    choice as on a GPU)."""
    device = cuda_device() if cuda else "cpu"
    with ieee_fp32():
        ref = run_scene(Refiner(net, device=device, precision="fp32"), c.n)
    half = run_scene(Refiner(net, device=device, precision="fp16"), c.n)
    values = dict(differences(ref, half), nonfinite=nonfinite(half))
    c.figures(f"fp16_vs_fp32/{name}", values, dict(REDUCED, nonfinite=0) if name == "shipped" else {"nonfinite": 0})


def check_graphs(c: Check, name: str, net: AlphaRefineNet, cuda: bool, counts: List[int]) -> None:
    """CUDA graphs against eager torch: fp32 (IEEE) replays equal eager passes within BATCH (cuDNN may pick
    other algorithms for a captured shape), fp16 replays within REDUCED; batches padded to a capture size
    (5 -> 6) too; after ``warm_up`` no call runs eagerly (every shape captured before the first frame), and
    a batch over the largest capture size runs eagerly instead of being captured."""
    if not cuda:
        c.skip(f"cuda_graphs_vs_eager/{name}", c.no_cuda)
        return
    device, top = cuda_device(), max(counts)
    sizes = sorted({1, 3, 5, *counts})
    values: Dict[str, float] = {}
    for precision in ("fp32", "fp16"):
        eager = Refiner(net, device=device, precision=precision)
        graphed = Refiner(net, device=device, precision=precision, cuda_graphs=True)
        diffs = []
        with ieee_fp32():  # captured in IEEE fp32 too: a graph keeps the algorithms of its capture
            graphed.runner.warm_up(range(1, top + 1), with_mask=True)  # every mode, so mask=True replays too
            for i, n in enumerate(sizes + [3]):  # the second 3: a captured shape replayed with other inputs
                for mask in (False, True):
                    diffs.append(differences(run_scene(eager, n, mask, i), run_scene(graphed, n, mask, i)))
        for fig, v in worst(*diffs).items():
            values[f"{precision}_{fig}"] = v
        values[f"{precision}_eager_calls"] = float(sum(graphed.runner.eager_calls.values()))
    # the Refiner's own warm_up (its box mode), then a batch over the largest capture size
    over = max(graphed.runner.sizes) + 1
    r = Refiner(net, device=device, precision="fp16", cuda_graphs=True, max_batch=over)
    r.warm_up(top)
    for n in sorted({1, top}):
        run_scene(r, n, mask=False)
    values["warm_up_missed_calls"] = float(sum(r.runner.eager_calls.values()))
    run_scene(r, over, mask=False)
    values["over_max_not_eager"] = float(not any(k[0] == over for k in r.runner.eager_calls))
    values["captured_graphs"] = float(len(r.runner.captured))
    limits = {f"{p}_{k}": v for p, lim in (("fp32", BATCH), ("fp16", REDUCED)) for k, v in lim.items()}
    limits.update(fp32_eager_calls=0, fp16_eager_calls=0, warm_up_missed_calls=0, over_max_not_eager=0)
    c.figures(f"cuda_graphs_vs_eager/{name}", values, limits)


def precisions(cuda: bool) -> Dict[str, Tuple[dict, Dict[str, float]]]:
    """The Refiner settings parity is checked for, with each one's tolerance between batch sizes."""
    if not cuda:
        return {"fp32": ({"precision": "fp32"}, BATCH)}
    return {"fp32": ({"precision": "fp32"}, BATCH), "fp16": ({"precision": "fp16"}, REDUCED),
            "fp16-graphs": ({"precision": "fp16", "cuda_graphs": True}, REDUCED)}


def check_batch(c: Check, name: str, net: AlphaRefineNet, cuda: bool, counts: List[int]) -> None:
    """A batch of N targets (templates in one pass, refined in one pass) vs N single calls, for N in
    ``counts`` and every precision."""
    device = cuda_device() if cuda else "cpu"
    for label, (kwargs, tol) in precisions(cuda).items():
        values: Dict[str, float] = {}
        with ieee_fp32():
            batched = Refiner(net, device=device, **kwargs)
            single = Refiner(net, device=device, **kwargs)
            for r in (batched, single):
                r.warm_up(max(counts))
            for n in counts:
                many = run_scene(batched, n)
                first, later, templates, bases = scene(n)
                single.clear()
                for tid, box in templates.items():
                    single.set_target(first, box, tid)
                ones = {tid: single.refine(later, {tid: box}, mask=True)[tid] for tid, box in bases.items()}
                for fig, v in differences(many, ones).items():
                    values[f"{fig}/{n}"] = v
                values[f"unbatched/{n}"] = float(n - batched.last_batch_size)
        limits = {f"{fig}/{n}": t for fig, t in dict(tol, unbatched=0).items() for n in counts}
        c.figures(f"batch_vs_single/{name}/{device.split(':')[0]}/{label}", values, limits)


def check_refine_many(c: Check, name: str, net: AlphaRefineNet, device: str) -> None:
    """Three cameras (one of them bgr) in ONE refine_many pass vs one refine call per camera."""
    with ieee_fp32():
        r = Refiner(net, device=device, precision="fp32")
        jobs, separate = [], []
        for cam in range(3):
            first, later, templates, bases = scene(c.per_camera, camera=cam)
            color = "bgr" if cam == 1 else "rgb"
            if color == "bgr":
                first, later = np.ascontiguousarray(first[..., ::-1]), np.ascontiguousarray(later[..., ::-1])
            r.set_targets(first, {(cam, t): b for t, b in templates.items()}, color=color)
            jobs.append((later, {(cam, t): b for t, b in bases.items()}, color))
        for frame, boxes, color in jobs:
            separate.append(r.refine(frame, boxes, color=color, mask=True))
        passes = r.passes
        together = r.refine_many(jobs, mask=True)
    values = worst(*(differences(a, b) for a, b in zip(together, separate)))
    values["extra_passes"] = float(r.passes - passes - 1)
    c.figures(f"refine_many_vs_refine/{name}/{device.split(':')[0]}", values, dict(BATCH, extra_passes=0))


def check_onnxruntime(c: Check, net: AlphaRefineNet, cuda: bool, onnx_dir: Optional[str]) -> None:
    """The shipped model's exported graphs under ONNX Runtime vs torch: CPU, and the CUDA provider."""
    names = ("onnxruntime_cpu_vs_torch/shipped", "onnxruntime_cuda_vs_torch/shipped", "onnxruntime_auto/shipped")
    if importlib.util.find_spec("onnxruntime") is None:
        for n in names:
            c.skip(n, "no onnxruntime package")
        return
    if onnx_dir is None and importlib.util.find_spec("onnx") is None:  # torch.onnx.export needs it
        for n in names:
            c.skip(n, "no onnx package to export the graphs (pass --onnx DIR from `ar-refine export onnx`)")
        return
    with tempfile.TemporaryDirectory(prefix="ar_ros_gpu_check_onnx_") as tmp:
        if onnx_dir is None:
            from ar_ros.backends.onnx_export import export_onnx
            onnx_dir = str(export_onnx(load_network(DEFAULT_CHECKPOINT)[0], tmp))
        compare_onnxruntime(c, net, cuda, onnx_dir, names)


def compare_onnxruntime(c: Check, net: AlphaRefineNet, cuda: bool, onnx_dir: str, names: Tuple[str, ...]) -> None:
    """ONNX Runtime on CPU, then with its CUDA provider (when it has one and it loads), vs torch there; and
    what ``backend: onnxruntime`` with the defaults (device auto, precision auto) does on this machine."""
    import warnings
    import onnxruntime as ort
    from ar_ros.backends.base import BackendError
    for device, name in zip(("cpu", cuda_device() if cuda else "cuda"), names):
        if device != "cpu" and not cuda:
            c.skip(name, c.no_cuda)
            continue
        if device != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
            c.skip(name, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (PyPI's onnxruntime is "
                         f"CPU-only; onnxruntime-gpu has it; providers: {', '.join(ort.get_available_providers())})")
            continue
        try:
            backend = Refiner(onnx_dir, device=device, backend="onnxruntime")
        except BackendError as err:  # a CUDA provider that is listed but does not load: said, not hidden
            c.skip(name, f"the CUDA provider did not load: {err}")
            continue
        with ieee_fp32():
            ref = run_scene(Refiner(net, device=device, precision="fp32"), c.n)
        c.figures(name, differences(ref, run_scene(backend, c.n)), REDUCED if device != "cpu" else ONNX)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = Refiner(onnx_dir, backend="onnxruntime")  # device auto, precision auto: the node's defaults
        results = run_scene(auto, c.n)
    note = "; ".join(str(w.message) for w in caught if "onnxruntime" in str(w.message))
    c.env["onnxruntime_auto"] = {"device": str(auto.device), "precision": auto.runner.precision, "note": note}
    c.figures(names[2], {"nonfinite": nonfinite(results)}, {"nonfinite": 0})


def check_tensorrt(c: Check, cuda: bool, onnx_dir: Optional[str], build: bool) -> None:
    """TensorRT: skipped with the reason, or with ``--tensorrt`` engines built (minutes) and checked
    against torch fp32 within REDUCED."""
    if not cuda:
        c.skip("tensorrt", c.no_cuda)
    elif importlib.util.find_spec("tensorrt") is None:
        c.skip("tensorrt", "no tensorrt package on this machine (pip install tensorrt; JetPack ships it)")
    elif not build:
        c.skip("tensorrt", "tensorrt is installed; --tensorrt builds its engines (minutes) and checks them")
    elif importlib.util.find_spec("onnx") is None and onnx_dir is None:
        c.skip("tensorrt", "no onnx package to export the graphs (pass --onnx DIR)")
    else:
        from ar_ros.backends.onnx_export import export_onnx
        from ar_ros.backends.tensorrt import build_engines
        net = load_network(DEFAULT_CHECKPOINT)[0]
        with tempfile.TemporaryDirectory(prefix="ar_ros_gpu_check_trt_") as tmp:
            folder = onnx_dir or str(export_onnx(net, tmp))
            build_engines(folder, max_batch=32, device=torch.device(cuda_device()))
            engines = Refiner(folder, device=cuda_device(), backend="tensorrt")
            with ieee_fp32():
                ref = run_scene(Refiner(net, device=cuda_device(), precision="fp32"), c.n)
            half = run_scene(engines, c.n)
            c.figures("tensorrt", dict(differences(ref, half), nonfinite=nonfinite(half)), dict(REDUCED, nonfinite=0))


def run_pytest(c: Check) -> None:
    """The suite's CUDA tests (skipped on CPU; the CPU-side ones still run) in this Python."""
    if importlib.util.find_spec("pytest") is None:
        c.skip("pytest_cuda", "no pytest package")
        return
    files = ["test/test_refiner.py", "test/test_cuda_graphs.py"]
    if not c.dry_run:  # the device crops and fp16 on CPU: seconds on a GPU machine's cores, long in CI
        files += ["test/test_device_crop.py", "test/test_fp16_cpu.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-o", "addopts=", *files,
           "-k", "cuda or gpu or device_crop or fp16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    tail = lines[-1].strip("= ") if lines else proc.stderr.strip()[-300:]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", flush=True)
    c.checks["pytest_cuda"] = "ok: " + tail if proc.returncode == 0 else f"FAIL: {tail}"
    print(f"[gpu_check]   pytest_cuda: {c.checks['pytest_cuda']}", flush=True)


# ------------------------------------------------------------------ benchmarks
def device_ms(refiner: Refiner, frame: np.ndarray, boxes: Dict, mask: bool, reps: int = 20) -> float:
    """GPU time of one refine pass (ms): CUDA events around ``reps`` back-to-back crop passes and ``reps``
    back-to-back search passes on the device (the host enqueues faster than these run, so the span is
    the GPU's work), the frame uploaded once before."""
    from ar_ros.engine import crop as cropping
    from ar_ros.engine.device_crop import DeviceCropper
    from ar_ros.engine.masks import LOGIT_THRESHOLDS
    runner = refiner.runner
    windows = [cropping.window_for(b, refiner.search_factor, refiner.input_size, refiner.crop_mode)
               for b in boxes.values()]
    cropper = DeviceCropper(runner.input_device, runner.input_dtype, runner.memory_format)
    fused = refiner.resolved_box_mode() == "fused"
    logits = fused and not mask and runner.mask_logits and \
        LOGIT_THRESHOLDS[0] <= refiner.mask_threshold <= LOGIT_THRESHOLDS[1]
    with torch.inference_mode():
        on_device = cropper.upload(frame)
        images = cropper(frame, windows, "rgb", on_device=on_device)
        kernels = runner.template(images)
        spans = []
        for fn in (lambda: cropper(frame, windows, "rgb", on_device=on_device),
                   lambda: runner.search(images, kernels, mask or fused, logits)):
            fn()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            spans.append(start.elapsed_time(end) / reps)
    return float(sum(spans))


def benchmark(c: Check, nets: Dict[str, AlphaRefineNet], cuda: bool, counts: List[int], repeat: int,
              warmup: int) -> None:
    """Median / p95 ms per Refiner.refine call, every configuration round-robin (eval.timing.interleaved),
    each refiner warmed up first (CUDA graphs captured for 1..max targets); on a GPU also the GPU time of
    a pass (:func:`device_ms`) and the host's share per target (median - GPU time, over the targets)."""
    device = cuda_device() if cuda else "cpu"
    configs = {"cuda-fp32": dict(precision="fp32"), "cuda-fp16": dict(precision="fp16"),
               "cuda-fp16-graphs": dict(precision="fp16", cuda_graphs=True)} if cuda else \
        {"cpu-fp32": dict(precision="fp32")}
    if not cuda:
        c.skip("benchmark_cuda", c.no_cuda + " (timed torch CPU fp32 instead)")
    frame, boxes = frame_and_boxes(max(counts))
    for model, net in nets.items():
        fns, refiners = {}, {}
        for label, kwargs in configs.items():
            try:  # a configuration that breaks (say, CUDA graph capture) is reported; the others are timed
                refiner = Refiner(net, device=device, **kwargs)
                refiner.warm_up(max(counts))
                if kwargs.get("cuda_graphs"):
                    refiner.runner.warm_up(range(1, max(counts) + 1), with_mask=True)  # box+mask rows too
                refiner.set_targets(frame, boxes)
                mine = {}
                for mask in (False, True):
                    for n in counts:
                        subset = dict(list(boxes.items())[:n])
                        key = f"{model}/{label}/{'box+mask' if mask else 'box'}/{n}"
                        mine[key] = (lambda r=refiner, s=subset, m=mask: r.refine(frame, s, mask=m))
                        mine[key]()  # must work before it is timed
                        refiners[key] = (refiner, subset, mask)
                fns.update(mine)
            except Exception as err:  # noqa: BLE001
                c.error(f"benchmark/{model}/{label}", err)
        results = interleaved(fns, repeat, warmup=warmup)  # refine() syncs: it copies the outputs to the host
        c.bench.update(results)
        for key, (med, p95) in results.items():
            line = f"[gpu_check]   {key:40s} {med:9.3f} ms  (p95 {p95:.3f})"
            if cuda:
                refiner, subset, mask = refiners[key]
                gpu = device_ms(refiner, frame, subset, mask)
                c.split[key] = {"gpu_ms": _round(gpu), "host_ms_per_target": _round(max(med - gpu, 0.0) / len(subset))}
                line += f"  gpu {gpu:.3f} ms, host {c.split[key]['host_ms_per_target']:.4f} ms/target"
            print(line, flush=True)
        graphed = {id(r.runner): r.runner for r, _, _ in refiners.values() if hasattr(r.runner, "eager_calls")}
        if graphed:  # warmed up: no timed call may have run eagerly
            calls = float(sum(sum(g.eager_calls.values()) for g in graphed.values()))
            c.figures(f"benchmark_graphs_warm/{model}", {"eager_calls": calls}, {"eager_calls": 0})
        c.save()
    for key, limit in GOALS.items():
        kind, _, config = key.partition(":") if ":" in key else ("median_ms", "", key)
        value = c.bench[config][0] if kind == "median_ms" and config in c.bench else \
            c.split.get(config, {}).get(kind)
        if value is not None:
            c.goals[key] = {"value": _round(value), "goal": limit, "met": value <= limit}
    c.checks["benchmark"] = f"ok: {len(c.bench)} configurations"


def plot(c: Check) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        c.skip("plot", "no matplotlib package")
        return
    from bench_backends import plot as draw
    path = c.out / "gpu_check.png"
    draw(c.bench, str(path), f"gpu_check: {c.env.get('gpu') or 'CPU (dry run)'}, torch {torch.__version__}")
    c.files.append(str(path))
    c.checks["plot"] = "ok"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="on CPU, few iterations: tests this script's plumbing")
    ap.add_argument("--out", default=str(ROOT / "out" / "gpu_check"))
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per configuration (100; dry run 1)")
    ap.add_argument("--targets", default=None, help="target counts to time (1,8,32; dry run 1,2)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; dry run 1)")
    ap.add_argument("--onnx", default=None, help="an `ar-refine export onnx` folder of the shipped model "
                                                 "(default: export one here, which needs the onnx package)")
    ap.add_argument("--tensorrt", action="store_true", help="build TensorRT engines (minutes) and check them")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c = Check(out, args.dry_run)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        msg = "no CUDA device (torch.cuda.is_available() is False); --dry-run checks the plumbing on CPU"
        print(f"gpu_check: {msg}", file=sys.stderr)
        print(json.dumps({"ok": False, "dry_run": False, "error": msg}))
        return 2
    repeat = args.repeat or (1 if args.dry_run else 100)
    threads = args.threads or (1 if args.dry_run else 0)
    if threads:  # the dry run shares CI's cores with the test suite
        torch.set_num_threads(threads)
        import cv2
        cv2.setNumThreads(threads)
    counts = [int(n) for n in (args.targets or ("1,2" if args.dry_run else "1,8,32")).split(",")]
    c.step("environment", lambda: c.env.update(environment(args.dry_run)))
    print("[gpu_check] " + json.dumps(c.env), flush=True)
    c.files.append(str(out / "gpu_check.json"))
    torch.manual_seed(0)
    nets = {"shipped": load_network(DEFAULT_CHECKPOINT)[0], "authors": calibrated(AlphaRefineNet(AUTHORS_CONFIG))}
    device = cuda_device() if cuda else "cpu"
    parity_counts = [1, 2] if args.dry_run else [1, 8, 32]
    c.step("pytest_cuda", lambda: run_pytest(c))
    c.step("device_crops_vs_opencv", lambda: check_device_crops(c, cuda))
    for name, net in nets.items():
        c.step(f"cuda_fp32_vs_cpu_fp32/{name}", lambda: check_cuda_vs_cpu(c, name, net, cuda))
        c.step(f"fp16_vs_fp32/{name}", lambda: check_fp16(c, name, net, cuda))
        c.step(f"cuda_graphs_vs_eager/{name}", lambda: check_graphs(c, name, net, cuda, parity_counts))
        c.step(f"batch_vs_single/{name}", lambda: check_batch(c, name, net, cuda, parity_counts))
        c.step(f"refine_many_vs_refine/{name}", lambda: check_refine_many(c, name, net, device))
    c.step("onnxruntime", lambda: check_onnxruntime(c, nets["shipped"], cuda, args.onnx))
    c.step("tensorrt", lambda: check_tensorrt(c, cuda, args.onnx, args.tensorrt))
    c.step("benchmark", lambda: benchmark(c, nets, cuda, counts, repeat, 0 if args.dry_run else 2))
    c.step("plot", lambda: plot(c))
    c.save()
    sys.stderr.flush()
    print(json.dumps(c.summary(), allow_nan=False), flush=True)
    return 0 if c.ok else 1


if __name__ == "__main__":
    sys.exit(main())
