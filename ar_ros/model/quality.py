"""Box-quality head: the network's own estimate of how good its box is (and how good the input box was).

The idea is IoU-Net's / ATOM's: the features that localise a target also tell how well a given box covers
it. The head is a separate, small branch on what :meth:`AlphaRefineNet.search` already computes, so the
box and mask outputs do not change with or without it. Its inputs:

* the fused correlation features (the neck's output, stride 16, 64 channels), narrowed by a 1x1 conv and
  sampled by ``grid_sample`` at a ``grid x grid`` lattice of points inside the refined (corner) box and
  inside the base (input) box, which sits at a fixed place in every search crop (centred,
  ``input_size / search_factor`` wide: see :func:`base_box`);
* the refined box against the base box: its corners relative to the base box's in base-box widths, how far
  it lies inside the base box on each side, the log of its size; and the corner peak sharpness;
* the two corner probability maps the refined corners are the expectations of (``corner_prob``), reduced
  to moments: per corner the mean offset from the base box's corner and its square (how sure the network is
  of its own corner), and the log of the probability mass near the base box's corner (how plausible the
  network finds the base box: the cue that a right base box should be kept).

A two-layer MLP maps these to two logits: ``quality`` (the IoU of the refined box with the true box) and
``base_quality`` (the IoU of the base box with the true box); sigmoid, then a monotone piecewise-linear
calibration map per output (identity until :meth:`QualityHead.set_calibration` stores one fitted on
validation data), so every backend that runs the graph gets calibrated numbers.

Every step that depends only on the box or the maps is one ``linear`` with constant weights (the lattice,
the box's corners, the map moments), because the head's cost is its number of operators, not its arithmetic
(each is a dispatch in the CPU graph; MODEL_CARD.md); the calibration map is linear, relu, linear too. About
30 operators, all plain conv / linear / grid_sample / relu / log / clamp: exportable to ONNX (opset 16+).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .heads import map_grid

CALIBRATION_KNOTS = 21   # points of the piecewise-linear calibration map (fixed: a fixed state_dict shape)
OUTPUTS = ("quality", "base_quality")


def base_box(input_size: int, search_factor: float) -> torch.Tensor:
    """The base box in search-crop pixels (x1, y1, x2, y2): the crop is the base box enlarged by
    ``search_factor`` about its centre (``engine.crop.window_for``; the ``exact`` crop's integer rounding
    moves it by under a pixel)."""
    half = input_size / (2.0 * search_factor)
    c = input_size / 2.0
    return torch.tensor([c - half, c - half, c + half, c + half], dtype=torch.float32)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of (N,4) x1,y1,x2,y2 boxes (0 where the union is empty)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter
    return inter / union.clamp(min=1e-6)


def _lattice(base: torch.Tensor, steps: torch.Tensor, size: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``linear`` weight (2*g*g*2, 4) and bias that map a box's x1, y1, x2, y2 (crop px) to the ``grid_sample``
    coordinates (crop px * 2/size - 1: align_corners False, -1 and 1 are the map's outer edges) of the
    ``g x g`` lattice points inside it (first g*g) and inside the base box (constant: in the bias), ordered
    (box, row, column, x/y)."""
    g = len(steps)
    weight = torch.zeros(2, g, g, 2, 4, dtype=torch.float64)
    bias = torch.zeros(2, g, g, 2, dtype=torch.float64)
    k, s, b = 2.0 / size, steps.double(), base.double()
    for i in range(g):          # row: y
        for j in range(g):      # column: x
            weight[0, i, j, 0, 0], weight[0, i, j, 0, 2] = k * (1 - s[j]), k * s[j]
            weight[0, i, j, 1, 1], weight[0, i, j, 1, 3] = k * (1 - s[i]), k * s[i]
            bias[0, i, j] = -1.0
            bias[1, i, j, 0] = k * (b[0] + (b[2] - b[0]) * s[j]) - 1.0
            bias[1, i, j, 1] = k * (b[1] + (b[3] - b[1]) * s[i]) - 1.0
    return weight.reshape(-1, 4).float(), bias.reshape(-1).float()


def _moments(base: torch.Tensor, cells: int, step: float, offset: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``linear`` weights over the two flattened ``cells`` x ``cells`` corner maps (cell j at ``j * step +
    offset`` crop px): per corner (top-left about the base box's x1, y1, bottom-right about x2, y2) the
    expected dx, dy, dx^2, dy^2 from the base corner in base-box widths, (4 * 2, 2 * cells^2), and the
    probability in two Gaussian windows (sigma half a cell and one cell, peak 1) about it, (2 * 2, ...)."""
    side = float(base[2] - base[0])
    pos = torch.arange(cells, dtype=torch.float64) * step + offset
    ys, xs = pos.repeat_interleave(cells), pos.repeat(cells)
    n = cells * cells
    moments, windows = torch.zeros(8, 2 * n, dtype=torch.float64), torch.zeros(4, 2 * n, dtype=torch.float64)
    for c, (bx, by) in enumerate(((float(base[0]), float(base[1])), (float(base[2]), float(base[3])))):
        dx, dy = (xs - bx) / side, (ys - by) / side
        d2 = (xs - bx) ** 2 + (ys - by) ** 2
        moments[4 * c:4 * c + 4, c * n:(c + 1) * n] = torch.stack([dx, dy, dx * dx, dy * dy])
        windows[2 * c:2 * c + 2, c * n:(c + 1) * n] = torch.stack(
            [torch.exp(-d2 / (2.0 * sigma ** 2)) for sigma in (step / 2.0, step)])
    return moments.float(), windows.float()


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``; no operator where it already is (a traced graph then has no cast)."""
    return x if x.dtype == dtype else x.to(dtype)


class QualityHead(nn.Module):
    """Predicted IoU of the refined box and of the base box with the true box, both (B,) in [0, 1]."""

    # buffers (register_buffer in __init__; declared here for type checkers)
    base: torch.Tensor
    steps: torch.Tensor
    calib_x: torch.Tensor
    calib_y: torch.Tensor
    box_weight: torch.Tensor    # the rest: derived constants, not stored in the state_dict
    box_bias: torch.Tensor
    map_weight: torch.Tensor
    map_bias: torch.Tensor
    calib_spread: torch.Tensor
    calib_gather: torch.Tensor

    def __init__(self, in_channels: int = 64, input_size: int = 128, search_factor: float = 2.0,
                 width: int = 16, grid: int = 3, hidden: int = 32, corner_stride: int = 16,
                 stride: int = 16) -> None:
        super().__init__()
        self.input_size, self.grid = int(input_size), int(grid)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, kernel_size=1), nn.ReLU(inplace=True))
        base = base_box(input_size, search_factor)
        self.register_buffer("base", base)
        # lattice offsets inside a box, as fractions of its width / height (cell centres)
        steps = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        self.register_buffer("steps", steps)
        # calibration: knots (2, K) on the raw sigmoid output and the calibrated values there (identity)
        knots = torch.linspace(0.0, 1.0, CALIBRATION_KNOTS)
        self.register_buffer("calib_x", knots.repeat(2, 1))
        self.register_buffer("calib_y", knots.repeat(2, 1))
        # each output's probability copied to its K ramps, and each output's K ramps summed (derived)
        eye = torch.eye(2)
        self.register_buffer("calib_spread", eye.repeat_interleave(CALIBRATION_KNOTS, dim=0), persistent=False)
        self.register_buffer("calib_gather", eye.repeat_interleave(CALIBRATION_KNOTS, dim=1), persistent=False)
        # what the head computes from the box and from the corner maps is linear in them: one constant
        # ``linear`` each (derived, not stored). Box rows: both lattices; the box's corners relative to the
        # base box's in base-box widths (x1, y1, x2, y2), the same with the far corner's sign flipped (their
        # positive part: how far the box lies inside the base box on each side, the overlap's cue), its
        # width and height in base-box widths (for their log); map rows: the moments, then the windows
        # (+1e-4 for their log)
        lattice_w, lattice_b = _lattice(base, steps, float(input_size))
        side = float(base[2] - base[0])
        flip = torch.tensor([1.0, 1.0, -1.0, -1.0])
        size_w = torch.tensor([[-1.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0]]) / side
        fine = corner_stride != stride
        moments, windows = _moments(base, input_size // (stride // 2 if fine else stride),
                                    *map_grid(float(stride), fine))
        for name, value in (("box_weight", torch.cat((lattice_w, torch.eye(4) / side, torch.diag(flip) / side,
                                                       size_w))),
                            ("box_bias", torch.cat((lattice_b, -base / side, -base * flip / side, torch.zeros(2)))),
                            ("map_weight", torch.cat((moments, windows))),
                            ("map_bias", torch.tensor([0.0] * len(moments) + [1e-4] * len(windows)))):
            self.register_buffer(name, value, persistent=False)
        self.lattice_rows, self.moment_rows = len(lattice_b), len(moments)  # where raw() splits the rows
        # the MLP's input: the pooled lattices, the box rows after the lattice, the score, the map rows
        n_in = 2 * width * grid * grid + len(self.box_bias) - self.lattice_rows + 1 + len(self.map_bias)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))

    def raw(self, fused: torch.Tensor, boxes: torch.Tensor, score: torch.Tensor,
            corner_prob: torch.Tensor) -> torch.Tensor:
        """The two logits (B,2) before sigmoid and calibration (what training regresses)."""
        dtype = self.base.dtype  # the head runs in its own precision (fp32 in every backend)
        feat = self.reduce(_as(fused, dtype))
        boxes = _as(boxes, dtype)
        g, n, k = self.grid, self.lattice_rows, self.moment_rows
        box_rows = F.linear(boxes, self.box_weight, self.box_bias)           # (B, 4 g^2 + 10)
        # both lattices (refined box: rows 0..g-1, base box: rows g..2g-1) in grid_sample's [-1, 1]
        lattice = box_rows[:, :n].reshape(-1, 2 * g, g, 2)
        pooled = F.grid_sample(feat, lattice, mode="bilinear", padding_mode="zeros", align_corners=False)
        map_rows = F.linear(_as(corner_prob, dtype).flatten(1), self.map_weight, self.map_bias)  # (B, 12)
        # box rows after the lattice: corners (4), insets (4, their positive part), size (2, its log)
        x = torch.cat((pooled.flatten(1), box_rows[:, n:n + 4], torch.relu(box_rows[:, n + 4:n + 8]),
                       torch.log(box_rows[:, n + 8:].clamp(min=1e-2)), _as(score, dtype).unsqueeze(1),
                       map_rows[:, :k], torch.log(map_rows[:, k:])), dim=1)
        return self.mlp(x)

    def calibrate(self, prob: torch.Tensor) -> torch.Tensor:
        """(B,2) raw probabilities -> calibrated, through each output's piecewise-linear map, written as
        ``y_0 + sum_k c_k relu(p - x_k)`` (``c_k``: the change of slope at knot k; flat outside the knots):
        linear, relu, linear, whose weights come from the knots (a frozen graph or an ONNX export folds
        them: no search, three operators)."""
        x, y = self.calib_x, self.calib_y                                # (2, K)
        slope = (y[:, 1:] - y[:, :-1]) / (x[:, 1:] - x[:, :-1]).clamp(min=1e-6)
        kinks = torch.cat((slope[:, :1], slope[:, 1:] - slope[:, :-1], -slope[:, -1:]), dim=1)  # (2, K)
        ramps = torch.relu(F.linear(prob, self.calib_spread, -x.reshape(-1)))                  # (B, 2K)
        return F.linear(ramps, self.calib_gather * kinks.reshape(1, -1), y[:, 0])

    def forward(self, fused: torch.Tensor, boxes: torch.Tensor, score: torch.Tensor,
                corner_prob: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``quality`` and ``base_quality``, (B,) each, calibrated, in [0, 1]."""
        quality, base_quality = self.calibrate(torch.sigmoid(self.raw(fused, boxes, score, corner_prob))).unbind(1)
        return {"quality": quality, "base_quality": base_quality}

    def set_calibration(self, knots: Sequence[Sequence[float]], values: Sequence[Sequence[float]]) -> None:
        """Store the calibration maps: per output (``quality``, ``base_quality``), ``CALIBRATION_KNOTS``
        increasing raw-probability knots from 0 to 1 and the non-decreasing calibrated values there, in
        [0, 1] (so the output needs no clamp)."""
        x = torch.as_tensor(knots, dtype=torch.float32)
        y = torch.as_tensor(values, dtype=torch.float32)
        if x.shape != self.calib_x.shape or y.shape != self.calib_y.shape:
            raise ValueError(f"calibration needs {tuple(self.calib_x.shape)} knots and values, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if bool((x[:, 1:] <= x[:, :-1]).any()) or bool((y[:, 1:] < y[:, :-1]).any()):
            raise ValueError("calibration knots must increase and values must not decrease")
        if bool((y < 0.0).any()) or bool((y > 1.0).any()):
            raise ValueError("calibrated values must lie in [0, 1] (they are IoUs)")
        with torch.no_grad():
            self.calib_x.copy_(x)
            self.calib_y.copy_(y)
