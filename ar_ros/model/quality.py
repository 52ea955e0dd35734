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

The head's cost is its number of operators, not its arithmetic (each is a dispatch in the CPU graph;
MODEL_CARD.md), so everything that depends only on the box, the maps and the score is one ``linear`` with
constant weights over the three side by side (the lattices, the insets, the rows that go through a log), and
the features that are linear in them (the box's corners, the map moments, the score) are not computed at
all: the MLP's first layer is folded over the inputs (:meth:`QualityHead.first_layer`, from the stored
weights; a frozen graph or an ONNX export turns it into constants). The calibration map is linear, relu,
linear. 23 operators in the ONNX graph, all plain conv / linear / grid_sample / relu / log / clip:
exportable to ONNX (opset 16+).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from .heads import map_grid

CALIBRATION_KNOTS = 21   # points of the piecewise-linear calibration map (fixed: a fixed state_dict shape)
OUTPUTS = ("quality", "base_quality")
SIZE_SCALE = 100.0     # the log rows' scales: log(clamp(100 s, 1)) = log(clamp(s, 0.01)) + log(100)
WINDOW_SCALE = 1e4     # log(1e4 p + 1) = log(p + 1e-4) + log(1e4)


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
    in_weight: torch.Tensor     # the rest: derived constants, not stored in the state_dict
    in_bias: torch.Tensor
    linear_in: torch.Tensor
    linear_bias: torch.Tensor
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
        # what the head computes from the box, the corner maps and the score is linear in them: one constant
        # ``linear`` over the three side by side (derived, not stored). Its rows: both lattices; how far the
        # box lies inside the base box on each side (the box's corners relative to the base box's in base-box
        # widths, the far corner's sign flipped: their positive part is the overlap's cue); then the rows that
        # go through a log: the box's width and height in base-box widths (x100) and the probability in two
        # Gaussian windows about each base-box corner (x1e4, +1), so that one clamp at 1 serves both (the
        # constant shifts this brings go into the MLP's bias: :meth:`first_layer`). The stored MLP also takes
        # the box's corners, the map moments and the score, which are linear in the same inputs: its first
        # layer is folded over them (:meth:`first_layer`), so they are no operators of their own.
        lattice_w, lattice_b = _lattice(base, steps, float(input_size))
        side = float(base[2] - base[0])
        flip = torch.tensor([1.0, 1.0, -1.0, -1.0])
        size_w = torch.tensor([[-1.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0]]) / side
        fine = corner_stride != stride
        moments, windows = _moments(base, input_size // (stride // 2 if fine else stride),
                                    *map_grid(float(stride), fine))
        n_box, n_map = 4, moments.shape[1]
        self.lattice_rows, self.input_cols = len(lattice_b), n_box + n_map + 1  # inputs: box, maps, score
        rows = torch.zeros(self.lattice_rows + 4 + 2 + len(windows), self.input_cols)
        rows[:self.lattice_rows, :n_box] = lattice_w
        rows[self.lattice_rows:self.lattice_rows + 4, :n_box] = torch.diag(flip) / side
        rows[self.lattice_rows + 4:self.lattice_rows + 6, :n_box] = size_w * SIZE_SCALE
        rows[self.lattice_rows + 6:, n_box:n_box + n_map] = windows * WINDOW_SCALE
        bias = torch.cat((lattice_b, -base * flip / side, torch.zeros(2), torch.ones(len(windows))))
        self.row_split = (self.lattice_rows, 4, 2 + len(windows))  # lattices, insets, log rows
        # the stored MLP's linear inputs as ``linear`` over the same inputs: corners, score, moments
        linear_in = torch.zeros(4 + 1 + len(moments), self.input_cols)
        linear_in[:4, :n_box] = torch.eye(4) / side
        linear_in[4, -1] = 1.0
        linear_in[5:, n_box:n_box + n_map] = moments
        linear_bias = torch.cat((-base / side, torch.zeros(1 + len(moments))))
        for name, value in (("in_weight", rows), ("in_bias", bias), ("linear_in", linear_in),
                            ("linear_bias", linear_bias)):
            self.register_buffer(name, value, persistent=False)
        # the stored MLP's input (its first layer's columns, the order the head was trained in): the pooled
        # lattices, the corners (4), the insets' positive part (4), the log size (2), the score, the map
        # moments, the log windows
        self.stored_cols = (2 * width * grid * grid, 4, 4, 2, 1, len(moments), len(windows))
        self.mlp = nn.Sequential(nn.Linear(sum(self.stored_cols), hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 2))
        self._derived: Tuple[tuple, Tuple[torch.Tensor, ...]] = ((), ())  # (key, tensors): see derived()

    def first_layer(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The MLP's first layer over what :meth:`raw` concatenates (the pooled lattices, the insets' positive
        part, the log rows, the inputs), from the stored one: the columns of the linear features folded over
        the inputs, the log rows' constant shifts moved into the bias. Differentiable in training."""
        layer = cast(nn.Linear, self.mlp[0])
        weight, bias = layer.weight, layer.bias
        pooled, corners, insets, size, score, moments, windows = weight.split(self.stored_cols, dim=1)
        linear = torch.cat((corners, score, moments), dim=1)
        folded = torch.cat((pooled, insets, size, windows, linear @ self.linear_in), dim=1)
        shift = size.sum(1) * math.log(SIZE_SCALE) + windows.sum(1) * math.log(WINDOW_SCALE)
        return folded, bias + linear @ self.linear_bias - shift

    def calibration_layers(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The calibration maps (``calib_x``, ``calib_y``) as :meth:`calibrate`'s two ``linear`` layers: the
        ramps' bias (2K,), then the weight (2, 2K) and bias (2,) that sum them, each output's ramps scaled by
        its change of slope at that knot."""
        x, y = self.calib_x, self.calib_y                                # (2, K)
        slope = (y[:, 1:] - y[:, :-1]) / (x[:, 1:] - x[:, :-1]).clamp(min=1e-6)
        kinks = torch.cat((slope[:, :1], slope[:, 1:] - slope[:, :-1], -slope[:, -1:]), dim=1)  # (2, K)
        return -x.reshape(-1), self.calib_gather * kinks.reshape(1, -1), y[:, 0]

    def derived(self) -> Tuple[torch.Tensor, ...]:
        """:meth:`first_layer` and :meth:`calibration_layers`, computed once and kept while the stored tensors
        they come from are unchanged (their version counters and storage: an optimiser step, a
        ``load_state_dict``, ``set_calibration`` or a move to another device renews them), so that the eager
        path runs none of their operators per call; computed afresh while autograd is on (training, where
        the kept ones could not take part in a backward pass). A frozen graph or an ONNX export folds them
        into constants either way."""
        if torch.is_grad_enabled():  # training (of the head, or of a network that carries one)
            return self.first_layer() + self.calibration_layers()
        layer = cast(nn.Linear, self.mlp[0])
        sources = (layer.weight, layer.bias, self.calib_x, self.calib_y)
        try:
            key = tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in sources)
        except RuntimeError:  # inference tensors have no version counter: no cache
            return self.first_layer() + self.calibration_layers()
        if self._derived[0] != key:
            self._derived = (key, self.first_layer() + self.calibration_layers())
        return self._derived[1]

    def raw(self, fused: torch.Tensor, boxes: torch.Tensor, score: torch.Tensor,
            corner_prob: torch.Tensor) -> torch.Tensor:
        """The two logits (B,2) before sigmoid and calibration (what training regresses)."""
        dtype = self.base.dtype  # the head runs in its own precision (fp32 in every backend)
        feat = self.reduce(_as(fused, dtype))
        inputs = torch.cat((_as(boxes, dtype), _as(corner_prob, dtype).flatten(1), _as(score, dtype).unsqueeze(1)),
                           dim=1)
        rows = F.linear(inputs, self.in_weight, self.in_bias)
        lattice, insets, logs = rows.split(self.row_split, dim=1)
        # both lattices (refined box: rows 0..g-1, base box: rows g..2g-1) in grid_sample's [-1, 1]
        pooled = F.grid_sample(feat, lattice.reshape(-1, 2 * self.grid, self.grid, 2), mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        x = torch.cat((pooled.flatten(1), torch.relu(insets), torch.log(logs.clamp(min=1.0)), inputs), dim=1)
        weight, bias = self.derived()[:2]
        return self.mlp[2](torch.relu(F.linear(x, weight, bias)))

    def calibrate(self, prob: torch.Tensor) -> torch.Tensor:
        """(B,2) raw probabilities -> calibrated, through each output's piecewise-linear map, written as
        ``y_0 + sum_k c_k relu(p - x_k)`` (``c_k``: the change of slope at knot k; flat outside the knots):
        linear, relu, linear, whose weights come from the knots (:meth:`calibration_layers`): no search,
        three operators."""
        ramp_bias, weight, bias = self.derived()[2:]
        return F.linear(torch.relu(F.linear(prob, self.calib_spread, ramp_bias)), weight, bias)

    def forward(self, fused: torch.Tensor, boxes: torch.Tensor, score: torch.Tensor,
                corner_prob: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``quality`` and ``base_quality``, (B,) each, calibrated, in [0, 1]."""
        calibrated = self.calibrate(torch.sigmoid(self.raw(fused, boxes, score, corner_prob)))
        return {"quality": calibrated.select(1, 0), "base_quality": calibrated.select(1, 1)}  # unbind: 3 in ONNX

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
