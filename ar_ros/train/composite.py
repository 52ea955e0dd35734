"""Training sequences made of real photos: a target cut out of one photo moves over another photo.

Targets are cut out by GrabCut, started from a few rectangles per photo (the central one first: most
photos have one clear object in the middle); a cut-out is kept when it is one solid region that fills a
reasonable part of its rectangle. The cut-out then moves over a different photo with the synthetic
generator's motion model (:class:`ar_ros.data.synthetic.Sequence`: smooth path, scale, aspect and
rotation change, distractors, a passing occluder, motion blur, illumination change). The box and mask
are exact by construction: they are those of the pasted alpha.

Photos are split by file, so validation composites use targets and backgrounds no training pair saw.
"""
from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, List, Optional, Sequence as Seq, Tuple

import cv2
import numpy as np

from ..data.synthetic import Frame, Sequence
from .sampler import PairSource, sequence_pairs, tracker_pairs

CUT_SIDE = 256          # photos are segmented at this longer side (GrabCut is slow at full size)
VAL_EVERY = 5           # every 5th photo (sorted by path) is held out for validation


@dataclass(frozen=True)
class Cutout:
    """A target cut out of a photo: RGB pixels of its bounding box and the matching alpha (0..1)."""

    image: np.ndarray
    alpha: np.ndarray
    source: str


def read_rgb(path: Path) -> np.ndarray:
    """A photo as an RGB uint8 array."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _grabcut(img: np.ndarray, rect: Tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(img.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), mask, rect, bgd, fgd, 4, cv2.GC_INIT_WITH_RECT)
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros_like(fg)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    solid = (labels == biggest).astype(np.uint8)
    # fill holes: a target is one region; holes would teach the mask head GrabCut's mistakes
    contours, _ = cv2.findContours(solid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(solid)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return filled


def cutouts_from_photo(img: np.ndarray, source: str = "", tries: int = 4, seed: int = 0) -> List[Cutout]:
    """Cut-outs of one photo by GrabCut from the central rectangle and ``tries - 1`` random ones."""
    h, w = img.shape[:2]
    k = CUT_SIDE / max(h, w)
    small = cv2.resize(img, (max(8, round(w * k)), max(8, round(h * k))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    rng = np.random.default_rng(seed)
    rects = [(sw // 5, sh // 5, sw * 3 // 5, sh * 3 // 5)]
    for _ in range(tries - 1):
        rw, rh = int(sw * rng.uniform(0.25, 0.6)), int(sh * rng.uniform(0.25, 0.6))
        rects.append((int(rng.integers(2, sw - rw - 1)), int(rng.integers(2, sh - rh - 1)), rw, rh))
    out: List[Cutout] = []
    for rect in rects:
        fg = _grabcut(small, rect)
        area = int(fg.sum())
        if not 0.15 * rect[2] * rect[3] <= area <= 0.9 * rect[2] * rect[3]:
            continue
        x, y, bw, bh = cv2.boundingRect(fg)
        if min(bw, bh) < 12 or area < 0.3 * bw * bh:  # too thin to trust, or a scattered region
            continue
        # cut at full resolution: upsample the mask, keep the photo's own pixels
        x0, y0 = int(x / k), int(y / k)
        x1, y1 = min(w, int(math.ceil((x + bw) / k))), min(h, int(math.ceil((y + bh) / k)))
        full = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
        out.append(Cutout(np.ascontiguousarray(img[y0:y1, x0:x1]), np.clip(full, 0, 1), source))
    return out


def scene_name(filename: str) -> str:
    """The scene a photo shows: its name without a trailing number, capital L/R/A/B or left/right."""
    stem = re.sub(r"[LRAB]$", "", re.sub(r"_?\d+$", "", Path(filename).stem))
    stem = re.sub(r"(^|_)(left|right)$", "", stem.lower())
    return stem or "left-right"


def split_photos(photos: Seq[Path]) -> Tuple[List[Path], List[Path]]:
    """(training photos, held-out validation photos), split by file."""
    photos = sorted(photos)
    return ([p for i, p in enumerate(photos) if i % VAL_EVERY != VAL_EVERY - 1],
            [p for i, p in enumerate(photos) if i % VAL_EVERY == VAL_EVERY - 1])


class PhotoBank:
    """Photos (as backgrounds) and their cut-outs (as targets), loaded once."""

    def __init__(self, photos: Seq[Path], cache: Optional[Path] = None) -> None:
        """``cache``: a file keeping the cut-outs (GrabCut takes about a second a photo) for a resumed run."""
        if not photos:
            raise ValueError("no photos given")
        self.photos = [read_rgb(Path(p)) for p in photos]
        key = [Path(p).name for p in photos]
        if cache is not None and Path(cache).is_file():
            with open(cache, "rb") as f:
                saved = pickle.load(f)  # our own file, written below
            self.cutouts = saved["cutouts"] if saved.get("photos") == key else []
        else:
            self.cutouts = []
        if not self.cutouts:
            for i, (path, img) in enumerate(zip(photos, self.photos)):
                self.cutouts += cutouts_from_photo(img, Path(path).name, seed=i)
            if cache is not None:
                with open(cache, "wb") as f:
                    pickle.dump({"photos": key, "cutouts": self.cutouts}, f)
        if not self.cutouts:
            raise ValueError("GrabCut found no usable target in the photos")
        # one scene shot many times (a stereo calibration board: left01..right14) counts as one
        scenes = [scene_name(c.source) for c in self.cutouts]
        counts = {name: scenes.count(name) for name in scenes}
        weights = np.array([1.0 / counts[name] for name in scenes])
        self.cutout_p = weights / weights.sum()

    def cutout(self, rng: np.random.Generator) -> Cutout:
        """A random cut-out, each scene equally likely."""
        return self.cutouts[int(rng.choice(len(self.cutouts), p=self.cutout_p))]

    def background(self, rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
        """A random crop of a random photo, resized to ``size`` (w, h), sometimes mirrored."""
        img = self.photos[int(rng.integers(len(self.photos)))]
        h, w = img.shape[:2]
        want = size[0] / size[1]
        frac = rng.uniform(0.5, 1.0)
        cw = min(w, int(h * want)) * frac
        ch = cw / want
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        out = cv2.resize(img[int(y0):int(y0 + ch), int(x0):int(x0 + cw)], size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def _paste(canvas: np.ndarray, cut: Cutout, cx: float, cy: float, sx: float, sy: float, rot: float,
           mask_out: np.ndarray | None = None) -> None:
    """Warp ``cut`` to half-sizes (sx, sy) rotated by ``rot`` about (cx, cy) and blend it in."""
    h, w = cut.alpha.shape
    c, s = math.cos(rot), math.sin(rot)
    ax, ay = 2 * sx / w, 2 * sy / h
    # frame = R @ diag(ax, ay) @ (p - centre_of_cutout) + (cx, cy), rotation as in Sequence._outline
    m = np.array([[c * ax, -s * ay, 0.0], [s * ax, c * ay, 0.0]])
    m[:, 2] = (cx, cy) - m[:, :2] @ ((w - 1) / 2, (h - 1) / 2)
    size = (canvas.shape[1], canvas.shape[0])
    alpha = cv2.warpAffine(cut.alpha, m, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    pixels = cv2.warpAffine(cut.image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    canvas[:] = (canvas * (1 - alpha) + pixels * alpha).astype(np.uint8)
    if mask_out is not None:
        np.maximum(mask_out, alpha[..., 0], out=mask_out)


class CompositeSequence(Sequence):
    """A :class:`Sequence` whose background is a real photo and whose target is a real cut-out.

    The pose, distractors, occluder, blur and illumination are the synthetic generator's, drawn from the
    same seed; the cut-out keeps its own aspect ratio (times the generator's aspect change).
    """

    def __init__(self, seed: int, bank: PhotoBank, length: int = 150, size: Tuple[int, int] = (320, 240),
                 difficulty: float = 1.0) -> None:
        super().__init__(seed, length, size, difficulty)
        rng = np.random.default_rng([self.seed, 7])
        self.background = bank.background(rng, (self.width, self.height))
        self.cutout = bank.cutout(rng)
        h, w = self.cutout.alpha.shape
        self.aspect0 = math.log(w / h) + rng.uniform(-0.25, 0.25)
        self.distractor_cuts = [self.cutout if same else bank.cutout(rng)
                                for (_, _, _, same) in self.distractors]
        self.occluder_patch = bank.background(rng, (self.width, self.height))

    def __getitem__(self, t: int) -> Frame:
        if not 0 <= t < self.length:
            raise IndexError(f"frame {t} outside 0..{self.length - 1}")
        img = self.background.copy()
        for i, ((px, py, size, _), cut) in enumerate(zip(self.distractors, self.distractor_cuts)):
            cx = self.width * (0.5 + 0.45 * px(t + 37 * i))
            cy = self.height * (0.5 + 0.45 * py(t + 11 * i))
            sx, sy = self.base_size * size / 2
            _paste(img, cut, cx, cy, sx, sy, 0.3 * i)
        cx, cy, sx, sy, rot = self._pose(t)
        mask = np.zeros((self.height, self.width), np.float32)
        _paste(img, self.cutout, cx, cy, sx, sy, rot, mask)
        return self._effects(img, mask, t)

    def _occluder_pixels(self, x1: int, x2: int) -> object:
        return self.occluder_patch[:, x1:x2]


def composite_maker(bank: PhotoBank, length: int = 150, size: Tuple[int, int] = (320, 240)
                    ) -> Callable[[int], CompositeSequence]:
    """``seed -> CompositeSequence`` over ``bank``, the last 64 kept."""
    @lru_cache(maxsize=64)
    def make(seed: int) -> CompositeSequence:
        return CompositeSequence(seed, bank, length, size)
    return make


def composite_pairs(bank: PhotoBank, seed_range: Tuple[int, int], length: int = 150,
                    size: Tuple[int, int] = (320, 240), max_gap: int = 50) -> PairSource:
    """Training pairs from :class:`CompositeSequence` over ``bank`` (same pair rules as synthetic)."""
    return sequence_pairs(composite_maker(bank, length, size), seed_range, length, max_gap)


def composite_tracker_pairs(kind: str, bank: PhotoBank, seed_range: Tuple[int, int], length: int = 150,
                            size: Tuple[int, int] = (320, 240), n_sequences: int = 64,
                            max_gap: int = 50) -> PairSource:
    """Composite pairs whose base box is OpenCV ``kind``'s (``sampler.tracker_pairs`` over composites): a
    real tracker's mistakes on real-photo texture, which synthetic sequences do not show."""
    return tracker_pairs(kind, seed_range, n_sequences, length, size, max_gap,
                         make=composite_maker(bank, length, size))
