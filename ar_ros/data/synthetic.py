"""Deterministic synthetic tracking sequences with exact ground-truth boxes and masks.

Nothing can be downloaded where ar_ros is built, so this generator is the reference data for training
the shipped default model, for tests and for the demo. A sequence is a pure function of its seed: frame
``t`` is rendered directly (no simulation state), so training can sample any pair of frames cheaply.

Each sequence has a procedural textured background, one target (ellipse or polygon with its own
texture), smooth random motion with scale, aspect and rotation change, optional distractors that look
like the target, a passing occluder, motion blur and illumination change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np

Box = Tuple[float, float, float, float]


def _noise_texture(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    """Colourful multi-scale value noise, HxWx3 float32 in 0..1."""
    out = np.zeros((h, w, 3), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 1)
        small = rng.random((cells + 1, cells + 1, 3)).astype(np.float32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bg = _noise_texture(rng, h, w, octaves=5)
    tint = rng.random(3).astype(np.float32) * 0.6 + 0.4
    bg = (bg * tint * 255.0).astype(np.uint8)
    for _ in range(int(rng.integers(5, 15))):  # clutter: lines and blobs
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(bg, p1, p2, color, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(bg, c, int(rng.integers(3, max(4, min(h, w) // 10))), color, -1, cv2.LINE_AA)
    return bg


@dataclass(frozen=True)
class _Shape:
    kind: str                 # "ellipse" | "polygon"
    vertices: np.ndarray      # unit-shape outline, (N,2) in [-1,1]
    texture: np.ndarray       # 64x64x3 uint8


def _shape(rng: np.random.Generator) -> _Shape:
    if rng.random() < 0.4:
        ang = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        verts = np.stack([np.cos(ang), np.sin(ang)], 1)
        kind = "ellipse"
    else:
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.random(n)) * 2 * np.pi
        rad = 0.6 + 0.4 * rng.random(n)
        verts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
        verts /= np.abs(verts).max(axis=0, keepdims=True)
        kind = "polygon"
    base = rng.integers(0, 256, 3).astype(np.float32)
    tex = _noise_texture(rng, 64, 64, octaves=3)
    tex = np.clip(base * 0.6 + tex * 255 * 0.6 - 40, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:  # stripes or checks make corners findable
        period = int(rng.integers(6, 16))
        yy, xx = np.mgrid[0:64, 0:64]
        pattern = ((xx // period + (yy // period) * (rng.random() < 0.5)) % 2).astype(bool)
        tex[pattern] = np.clip(tex[pattern].astype(np.int32) - 70, 0, 255).astype(np.uint8)
    return _Shape(kind, verts.astype(np.float64), tex)


class _Path:
    """Smooth, bounded 1-D signal: a sum of a few random sinusoids."""

    def __init__(self, rng: np.random.Generator, n_terms: int = 3, speed: float = 1.0) -> None:
        self.f = rng.uniform(0.002, 0.02, n_terms) * speed * 2 * np.pi
        self.p = rng.uniform(0, 2 * np.pi, n_terms)
        self.a = rng.uniform(0.3, 1.0, n_terms)
        self.a /= self.a.sum()

    def __call__(self, t: float) -> float:
        return float(np.sum(self.a * np.sin(self.f * t + self.p)))  # in [-1, 1]


@dataclass
class Frame:
    """One rendered frame: RGB image, target box (x, y, w, h of the visible mask) and mask."""

    image: np.ndarray
    box: Box
    mask: Optional[np.ndarray]  # None where a real sequence has no mask
    base: Optional[Box] = None  # a base tracker's box on this frame, where a training pair source gives one


class Sequence:
    """A synthetic video. ``seq[t]`` renders frame ``t``; iterate for all frames."""

    def __init__(self, seed: int, length: int = 150, size: Tuple[int, int] = (640, 480),
                 difficulty: float = 1.0) -> None:
        self.seed, self.length = int(seed), int(length)
        self.width, self.height = int(size[0]), int(size[1])
        rng = np.random.default_rng(self.seed)
        w, h = self.width, self.height
        self.background = _background(rng, h, w)
        self.target = _shape(rng)
        self.base_size = rng.uniform(0.08, 0.28) * min(w, h) * np.array([1.0, 1.0])
        self.aspect0 = rng.uniform(-0.6, 0.6)
        self.paths = [_Path(rng, speed=difficulty) for _ in range(6)]  # x, y, scale, aspect, rotation, light
        self.rot_amp = rng.uniform(0.0, 0.5) * difficulty
        self.n_distractors = int(rng.integers(0, 3)) if difficulty > 0 else 0
        self.distractors = [(_Path(rng), _Path(rng), rng.uniform(0.6, 1.2), rng.random() < 0.5)
                            for _ in range(self.n_distractors)]
        self.occluder = rng.random() < 0.4 * difficulty
        self.occ_color = tuple(int(c) for c in rng.integers(0, 256, 3))
        self.occ_t0 = rng.uniform(0.2, 0.8) * self.length
        self.blur = rng.random() < 0.5 * difficulty
        self.light = 0.25 * difficulty

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Frame]:
        for t in range(self.length):
            yield self[t]

    def _pose(self, t: float) -> Tuple[float, float, float, float, float]:
        w, h = self.width, self.height
        scale = math.exp(0.45 * self.paths[2](t))
        aspect = math.exp(self.aspect0 + 0.35 * self.paths[3](t))
        sx = self.base_size[0] * scale * math.sqrt(aspect) / 2
        sy = self.base_size[1] * scale / math.sqrt(aspect) / 2
        margin_x, margin_y = sx + 4, sy + 4
        cx = w / 2 + (w / 2 - margin_x) * 0.95 * self.paths[0](t)
        cy = h / 2 + (h / 2 - margin_y) * 0.95 * self.paths[1](t)
        return cx, cy, sx, sy, self.rot_amp * math.pi * self.paths[4](t)

    def _outline(self, cx: float, cy: float, sx: float, sy: float, rot: float, verts: np.ndarray) -> np.ndarray:
        c, s = math.cos(rot), math.sin(rot)
        pts = verts * (sx, sy)
        pts = pts @ np.array([[c, s], [-s, c]])
        return (pts + (cx, cy)).astype(np.float32)

    def _paint(self, canvas: np.ndarray, outline: np.ndarray, texture: np.ndarray,
               mask_out: Optional[np.ndarray] = None) -> None:
        x1, y1 = np.floor(outline.min(0)).astype(int)
        x2, y2 = np.ceil(outline.max(0)).astype(int) + 1
        bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
        tex = cv2.resize(texture, (bw, bh), interpolation=cv2.INTER_LINEAR)
        m = np.zeros((bh, bw), np.uint8)
        cv2.fillPoly(m, [np.round((outline - (x1, y1)) * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
        H, W = canvas.shape[:2]
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
        if cx2 <= cx1 or cy2 <= cy1:
            return
        sub_m = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1].astype(np.float32)[..., None] / 255.0
        sub_t = tex[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1].astype(np.float32)
        region = canvas[cy1:cy2, cx1:cx2].astype(np.float32)
        canvas[cy1:cy2, cx1:cx2] = (region * (1 - sub_m) + sub_t * sub_m).astype(np.uint8)
        if mask_out is not None:
            mask_out[cy1:cy2, cx1:cx2] = np.maximum(mask_out[cy1:cy2, cx1:cx2], sub_m[..., 0])

    def _distractor_outlines(self, t: int) -> List[Tuple[np.ndarray, bool]]:
        """Each distractor's outline on frame ``t`` and whether it is a twin: the target's shape with the
        target's own texture (else the texture is flipped and its colours reversed)."""
        out = []
        for i, (px, py, size, same_texture) in enumerate(self.distractors):
            cx = self.width * (0.5 + 0.45 * px(t + 37 * i))
            cy = self.height * (0.5 + 0.45 * py(t + 11 * i))
            sx, sy = self.base_size * size / 2
            out.append((self._outline(cx, cy, sx, sy, 0.3 * i, self.target.vertices), bool(same_texture)))
        return out

    def distractor_boxes(self, t: int) -> List[Tuple[Box, bool]]:
        """(x, y, w, h of the outline, twin) of each distractor on frame ``t``, painted beneath the target.
        A twin is the target's shape with its texture at 0.6-1.2 times its base size: no single frame tells
        it from the target (so a per-frame quality estimate cannot either; ``eval --calibration``)."""
        return [((float(o[:, 0].min()), float(o[:, 1].min()), float(np.ptp(o[:, 0])), float(np.ptp(o[:, 1]))), twin)
                for o, twin in self._distractor_outlines(t)]

    def __getitem__(self, t: int) -> Frame:
        if not 0 <= t < self.length:
            raise IndexError(f"frame {t} outside 0..{self.length - 1}")
        img = self.background.copy()
        for outline, twin in self._distractor_outlines(t):
            tex = self.target.texture if twin else self.target.texture[::-1, ::-1, ::-1]
            self._paint(img, outline, np.ascontiguousarray(tex))
        cx, cy, sx, sy, rot = self._pose(t)
        mask = np.zeros((self.height, self.width), np.float32)
        self._paint(img, self._outline(cx, cy, sx, sy, rot, self.target.vertices), self.target.texture, mask)
        return self._effects(img, mask, t)

    def _occluder_pixels(self, x1: int, x2: int) -> object:
        """What the passing occluder shows in columns x1..x2: a flat colour here."""
        return self.occ_color

    def _effects(self, img: np.ndarray, mask: np.ndarray, t: int) -> Frame:
        """Occluder, motion blur and illumination on a frame whose target is painted (``mask``)."""
        cx, _, sx, _, _ = self._pose(t)
        if self.occluder:
            ox = int((t - self.occ_t0) * 4 + cx)
            ow = int(max(sx, 8))
            x1, x2 = max(ox - ow // 2, 0), min(ox + ow // 2, self.width)
            if x2 > x1:
                img[:, x1:x2] = self._occluder_pixels(x1, x2)
                mask[:, x1:x2] = 0.0
        if self.blur:
            dx = cx - self._pose(max(t - 1, 0))[0]
            k = int(min(abs(dx), 9))
            if k >= 2:
                kernel = np.zeros((1, k), np.float32) + 1.0 / k
                img = cv2.filter2D(img, -1, kernel)
                mask = cv2.filter2D(mask, -1, kernel)
        gain = 1.0 + self.light * self.paths[5](t)
        img = np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        return Frame(img, mask_box(mask), mask)


def mask_box(mask: np.ndarray, threshold: float = 0.5) -> Box:
    """Tight box of ``mask > threshold``; all zeros when empty (absent target, as LaSOT marks it)."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))


@lru_cache(maxsize=64)
def cached_sequence(seed: int, length: int, width: int, height: int, difficulty: float = 1.0) -> Sequence:
    """Sequences are cheap to render but their backgrounds are not: reuse them."""
    return Sequence(seed, length, (width, height), difficulty)


SUITES = {
    # name: (first seed, count, frames, (width, height)); seeds of the reference suites never overlap training
    "reference": (100_000, 20, 150, (640, 480)),
    "validation": (95_000, 10, 150, (640, 480)),  # for choosing between models; never report from it
    # the same and 50 more (closed-loop settings: one sequence there can swing by 70 AUC points on a small change)
    "validation60": (95_000, 60, 150, (640, 480)),
    "small": (100_000, 4, 60, (640, 480)),
    "tiny": (100_000, 2, 20, (320, 240)),
}
TRAIN_SEEDS = (0, 90_000)  # training draws seeds from this range only


def suite(name: str) -> List[Sequence]:
    """The named list of sequences (see ``SUITES``)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    first, count, length, size = SUITES[name]
    return [Sequence(first + i, length, size) for i in range(count)]
