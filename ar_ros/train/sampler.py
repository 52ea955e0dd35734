"""Training pairs as in the authors' recipe: template centred on the target, search crop jittered.

A sample is (template crop, search crop, GT corners in search-crop pixels, search mask, has_mask).
Crops use the engine's ``clean`` crop so that training and inference see identical geometry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from ..engine import crop as cropping
from ..data.base_trackers import jitter, run_opencv
from ..data.synthetic import Frame, Sequence, TRAIN_SEEDS, cached_sequence

# A frame source: (rng) -> (template Frame, search Frame). Folder readers provide the same shape.
PairSource = Callable[[np.random.Generator], Tuple[Frame, Frame]]


@dataclass(frozen=True)
class SamplerConfig:
    input_size: int = 128
    search_factor: float = 2.0
    scale_jitter: float = 0.25     # size' = size * exp(N(0,1) * s)
    center_jitter: float = 0.25    # centre' = centre + sqrt(w'h') * c * (U - 0.5)
    max_gap: int = 50              # frames between template and search
    gray_prob: float = 0.05
    brightness: float = 0.2        # factor ~ U(1 - b, 1 + b)
    small_jitter_prob: float = 0.0  # share of pairs whose base box is nearly right ("do no harm")
    small_jitter: float = 0.03     # largest scale and centre jitter of those pairs (each draws its own, uniformly)
    far_prob: float = 0.0          # share of pairs whose base box is off the target ("lost": see far_box)
    far_distance: Tuple[float, float] = (0.75, 3.0)  # how far, in units of sqrt(w h) of the target


def synthetic_pairs(seed_range: Tuple[int, int] = TRAIN_SEEDS, length: int = 150,
                    size: Tuple[int, int] = (320, 240), max_gap: int = 50) -> PairSource:
    """Pairs of frames from the synthetic generator, at most ``max_gap`` apart, target visible in both."""
    return sequence_pairs(lambda seed: cached_sequence(seed, length, size[0], size[1]), seed_range, length, max_gap)


def sequence_pairs(make: Callable[[int], Sequence], seed_range: Tuple[int, int], length: int = 150,
                   max_gap: int = 50) -> PairSource:
    """Pairs of frames of ``make(seed)`` sequences (seeds drawn from ``seed_range``), at most ``max_gap``
    apart, target visible in both."""
    def draw(rng: np.random.Generator) -> Tuple[Frame, Frame]:
        for _ in range(100):
            seq = make(int(rng.integers(*seed_range)))
            t1 = int(rng.integers(0, length))
            t2 = int(np.clip(t1 + rng.integers(-max_gap, max_gap + 1), 0, length - 1))
            a, b = seq[t1], seq[t2]
            if a.box[2] >= 4 and a.box[3] >= 4 and b.box[2] >= 4 and b.box[3] >= 4:
                return a, b
        raise RuntimeError("could not find a visible target pair in 100 draws")
    return draw


def tracker_pairs(kind: str = "csrt", seed_range: Tuple[int, int] = TRAIN_SEEDS, n_sequences: int = 64,
                  length: int = 150, size: Tuple[int, int] = (320, 240), max_gap: int = 50,
                  make: Optional[Callable[[int], Sequence]] = None) -> PairSource:
    """Pairs of frames whose search frame carries OpenCV ``kind``'s box as its base box (``Frame.base``;
    the tracker started on the sequence's first frame, open loop): base boxes as a real tracker makes them,
    sitting on a look-alike or drifting off in ways random jitter does not. The sequences are synthetic, or
    ``make(seed)``'s (e.g. real-photo composites). The tracker runs once per sequence (``n_sequences`` seeds
    evenly spread over ``seed_range``), when first drawn."""
    step = max(1, (seed_range[1] - seed_range[0]) // n_sequences)
    seeds = [seed_range[0] + i * step for i in range(n_sequences)]
    tracked: Dict[int, list] = {}
    if make is None:
        def make(seed: int) -> Sequence:
            return cached_sequence(seed, length, size[0], size[1])

    def draw(rng: np.random.Generator) -> Tuple[Frame, Frame]:
        for _ in range(100):
            seed = seeds[int(rng.integers(len(seeds)))]
            seq = make(seed)
            if seed not in tracked:
                tracked[seed] = run_opencv((seq[t].image for t in range(length)), seq[0].box, kind)
            t2 = int(rng.integers(1, length))
            t1 = int(np.clip(t2 + rng.integers(-max_gap, max_gap + 1), 0, length - 1))
            a, b, base = seq[t1], seq[t2], tracked[seed][t2]
            if base is not None and min(a.box[2], a.box[3], b.box[2], b.box[3], base[2], base[3]) >= 4:
                return a, Frame(b.image, b.box, b.mask, tuple(base))  # type: ignore[arg-type]
        raise RuntimeError("could not find a visible target pair with a tracker box in 100 draws")
    return draw


def dataset_pairs(sequences, max_gap: int = 50) -> PairSource:
    """Pairs from dataset sequences (``data.datasets.SequenceInfo``): two frames at most ``max_gap``
    apart with the target present in both; masks where the dataset has them (YouTube-VOS, COCO).
    A single-frame sequence (an image dataset such as COCO) pairs its frame with itself; the search
    crop's jitter still makes the pair a refinement problem, as in the paper."""
    usable = [s for s in sequences if len(s.gt) == len(s) and len(s) >= 1]
    if not usable:
        raise ValueError("no sequence with full ground truth")

    def draw(rng: np.random.Generator) -> Tuple[Frame, Frame]:
        for _ in range(100):
            seq = usable[int(rng.integers(len(usable)))]
            t1 = int(rng.integers(0, len(seq)))
            t2 = int(np.clip(t1 + rng.integers(-max_gap, max_gap + 1), 0, len(seq) - 1))
            b1, b2 = tuple(seq.gt[t1]), tuple(seq.gt[t2])
            if min(b1[2], b1[3], b2[2], b2[3]) >= 4:
                first = Frame(seq.image(t1), b1, seq.mask(t1))
                return first, (first if t2 == t1 else Frame(seq.image(t2), b2, seq.mask(t2)))
        raise RuntimeError("could not find a visible target pair in 100 draws")
    return draw


def mixed_pairs(sources) -> PairSource:
    """Draw from several pair sources with equal probability."""
    sources = list(sources)

    def draw(rng: np.random.Generator) -> Tuple[Frame, Frame]:
        return sources[int(rng.integers(len(sources)))](rng)
    return draw


def far_box(box: Tuple[float, float, float, float], rng: np.random.Generator, distance: Tuple[float, float],
            frame_size: Tuple[int, int], scale: float = 0.25) -> Tuple[float, float, float, float]:
    """A base box of about the target's size whose centre is ``distance`` (uniform in the range, in units
    of sqrt(w h)) away from the target's in a random direction, kept inside the frame: the target is at
    the crop's edge or outside it, or a distractor is under the box (a tracker that has lost its target)."""
    x, y, w, h = box
    w2, h2 = w * math.exp(rng.normal() * scale), h * math.exp(rng.normal() * scale)
    r = math.sqrt(w * h) * rng.uniform(*distance)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    cx = float(np.clip(x + w / 2 + r * math.cos(angle), 0, frame_size[0]))
    cy = float(np.clip(y + h / 2 + r * math.sin(angle), 0, frame_size[1]))
    return (cx - w2 / 2, cy - h2 / 2, w2, h2)


class PairSampler:
    """Turn frame pairs into network-ready tensors."""

    def __init__(self, source: PairSource, config: SamplerConfig = SamplerConfig()) -> None:
        self.source, self.cfg = source, config
        self.table = torch.from_numpy(cropping.normalisation_table())

    def _normalise(self, patch: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        img = patch.astype(np.float32)
        if rng.random() < self.cfg.gray_prob:
            img[:] = img.mean(axis=2, keepdims=True)
        b = self.cfg.brightness
        img = np.clip(img * rng.uniform(1 - b, 1 + b), 0, 255)
        t = torch.from_numpy(img).permute(2, 0, 1) / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        return (t - mean) / std

    def sample(self, rng: np.random.Generator) -> Dict[str, torch.Tensor]:
        cfg, size = self.cfg, self.cfg.input_size
        a, b = self.source(rng)
        t_win = cropping.window_for(a.box, cfg.search_factor, size, "clean")
        small = cfg.small_jitter_prob > 0 and rng.random() < cfg.small_jitter_prob
        if b.base is not None:  # a tracker's box (tracker_pairs), as it is
            base = b.base
        elif cfg.far_prob > 0 and not small and rng.random() < cfg.far_prob / (1.0 - cfg.small_jitter_prob):
            base = far_box(b.box, rng, cfg.far_distance, (b.image.shape[1], b.image.shape[0]), cfg.scale_jitter)
        else:
            # nearly right: a jitter of up to small_jitter, so these range from the exact box to a few % off
            tight = cfg.small_jitter * float(rng.random()) if small else 0.0
            base = jitter(b.box, rng, *((tight, tight) if small else (cfg.scale_jitter, cfg.center_jitter)))
        s_win = cropping.window_for(base, cfg.search_factor, size, "clean")
        truth = s_win.box_to_crop(b.box).astype(np.float32)  # unclipped: the true box, also off the crop
        target = np.clip(truth, 0, size)
        has_mask = b.mask is not None
        mask = cropping.crop(b.mask.astype(np.float32), s_win) if b.mask is not None else \
            np.zeros((size, size), np.float32)
        return {"template": self._normalise(cropping.crop(a.image, t_win), rng),
                "search": self._normalise(cropping.crop(b.image, s_win), rng),
                "target": torch.from_numpy(target), "truth": torch.from_numpy(truth), "mask": torch.from_numpy(mask)[None],
                "has_mask": torch.tensor(float(has_mask)), "base": torch.tensor(s_win.box_to_crop(base),
                                                                               dtype=torch.float32)}

    def batch(self, rng: np.random.Generator, n: int) -> Dict[str, torch.Tensor]:
        items = [self.sample(rng) for _ in range(n)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def fixed_batches(sampler: PairSampler, seed: int, n_batches: int, batch_size: int,
                  source: Optional[PairSource] = None) -> list:
    """A reproducible validation set (same pairs every epoch)."""
    rng = np.random.default_rng(seed)
    old = sampler.source
    if source is not None:
        sampler.source = source
    try:
        return [sampler.batch(rng, batch_size) for _ in range(n_batches)]
    finally:
        sampler.source = old
