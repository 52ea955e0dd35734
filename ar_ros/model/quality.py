"""Box-quality head: the network's own estimate of how good its box is (and how good the input box was).

The idea is IoU-Net's / ATOM's: the features that localise a target also tell how well a given box covers
it. The head is a separate, small branch on what :meth:`AlphaRefineNet.search` already computes, so the
box and mask outputs do not change with or without it:

* the fused correlation features (the neck's output, stride 16, 64 channels), narrowed by a 1x1 conv;
* pooled at two boxes by bilinear sampling (``grid_sample``, a ``grid x grid`` lattice of points inside
  each box): the refined (corner) box, and the base (input) box, which sits at a fixed place in every
  search crop (centred, ``input_size / search_factor`` wide: see :func:`base_box`);
* the features' global mean and max (is the template anywhere in the crop at all: the "lost" cue);
* the geometry: the refined box relative to the base box, their IoU, and the corner peak sharpness;
* the two corner probability maps the refined corners are the expectations of (``corner_prob``): per
  corner its spread (how sure the network is of its own corner), its offset from the base box's corner
  in units of that spread, the probability mass near the base box's corner (how plausible the network
  finds the base box: the cue that a right base box should be kept) and its peak.

A two-layer MLP maps these to two logits: ``quality`` (the IoU of the refined box with the true box) and
``base_quality`` (the IoU of the base box with the true box); sigmoid, then a monotone piecewise-linear
calibration map per output (identity until :meth:`QualityHead.set_calibration` stores one fitted on
validation data), so every backend that runs the graph gets calibrated numbers. Everything is plain
conv / matmul / grid_sample / min / max: exportable to ONNX (opset 16+).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import map_grid

CORNER_FEATURES = 9      # per corner map: QualityHead.corner_features
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


def _box_maps(base: torch.Tensor, steps: torch.Tensor, size: float) -> Dict[str, torch.Tensor]:
    """The constant matrices of :meth:`QualityHead.raw`, for x1,y1,x2,y2 rows times them:

    * ``grid_map`` (4, 2*g*g*2) + ``grid_offset``: the lattice points of the box (first g*g) and of the base
      box (constant, in the offset) in ``grid_sample``'s coordinates (crop px * 2/size - 1: align_corners
      False, -1 and 1 are the map's outer edges), ordered (box, row, column, x/y);
    * ``side_map`` (4, 2): width, height; ``centre_map`` + ``centre_offset``: the centre's offset from the
      base box's, in base-box widths; ``corner_sign``, ``base_signed``: max(box * s, base * s) * s is the
      intersection's corners (s = 1, 1, -1, -1 turns the min of the far corners into a max).
    """
    g = len(steps)
    grid_map = torch.zeros(4, 2, g, g, 2, dtype=torch.float64)
    grid_offset = torch.zeros(2, g, g, 2, dtype=torch.float64)
    k = 2.0 / size
    s = steps.double()
    for i in range(g):          # row: y
        for j in range(g):      # column: x
            grid_map[0, 0, i, j, 0], grid_map[2, 0, i, j, 0] = k * (1 - s[j]), k * s[j]
            grid_map[1, 0, i, j, 1], grid_map[3, 0, i, j, 1] = k * (1 - s[i]), k * s[i]
            grid_offset[0, i, j] = -1.0
            b = base.double()
            grid_offset[1, i, j, 0] = k * (b[0] + (b[2] - b[0]) * s[j]) - 1.0
            grid_offset[1, i, j, 1] = k * (b[1] + (b[3] - b[1]) * s[i]) - 1.0
    side = float(base[2] - base[0])
    side_map = torch.tensor([[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0]])
    centre_map = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) / (2 * side)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0])
    return {"grid_map": grid_map.reshape(4, -1).float(), "grid_offset": grid_offset.reshape(-1).float(),
            "side_map": side_map, "centre_map": centre_map,
            "centre_offset": -(centre_map.T @ base).reshape(1, 2), "corner_sign": sign, "base_signed": base * sign,
            "base_side": torch.tensor(side), "base_area": torch.tensor(side * float(base[3] - base[1]))}


def _affine(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``x @ matrix + offset`` for (B,4) box rows, as a broadcast product and a sum: oneDNN Graph (the CPU
    graphs, torch 2.13) fails to compile a matmul followed by the add of a constant (vector::_M_range_check),
    which left a network with a quality head without its CPU graphs."""
    return (x.unsqueeze(-1) * matrix).sum(dim=-2) + offset


def _corner_maps(base: torch.Tensor, cells: int, step: float, offset: float) -> Dict[str, torch.Tensor]:
    """The constants of :meth:`QualityHead.corner_features` for ``cells`` x ``cells`` corner maps whose cell j
    sits at ``j * step + offset`` crop px: ``corner_moments`` (2, cells*cells, 6), per corner (top-left at
    the base box's x1,y1, bottom-right at x2,y2) and cell: dx, dy, dx^2, dy^2 from the base corner in
    base-box widths and two Gaussian windows (sigma half a cell and one cell, peak 1) about the base corner;
    ``corner_cell``: a quarter cell in base-box widths (keeps the offset-in-spreads finite)."""
    side = float(base[2] - base[0])
    pos = torch.arange(cells, dtype=torch.float64) * step + offset
    ys, xs = pos.repeat_interleave(cells), pos.repeat(cells)
    rows = []
    for bx, by in ((float(base[0]), float(base[1])), (float(base[2]), float(base[3]))):
        dx, dy = (xs - bx) / side, (ys - by) / side
        d2 = (xs - bx) ** 2 + (ys - by) ** 2
        windows = [torch.exp(-d2 / (2.0 * sigma ** 2)) for sigma in (step / 2.0, step)]
        rows.append(torch.stack([dx, dy, dx * dx, dy * dy] + windows, dim=1))
    return {"corner_moments": torch.stack(rows).float(), "corner_cell": torch.tensor(step / (4.0 * side))}


class QualityHead(nn.Module):
    """Predicted IoU of the refined box and of the base box with the true box, both (B,) in [0, 1]."""

    # buffers (register_buffer in __init__; declared here for type checkers)
    base: torch.Tensor
    steps: torch.Tensor
    calib_x: torch.Tensor
    calib_y: torch.Tensor
    grid_map: torch.Tensor      # the rest: _box_maps, not stored in the state_dict
    grid_offset: torch.Tensor
    side_map: torch.Tensor
    centre_map: torch.Tensor
    centre_offset: torch.Tensor
    corner_sign: torch.Tensor
    base_signed: torch.Tensor
    base_side: torch.Tensor
    base_area: torch.Tensor
    corner_moments: torch.Tensor
    corner_cell: torch.Tensor

    def __init__(self, in_channels: int = 64, input_size: int = 128, search_factor: float = 2.0,
                 width: int = 32, grid: int = 3, hidden: int = 128, corner_stride: int = 16,
                 stride: int = 16) -> None:
        super().__init__()
        self.input_size, self.grid = int(input_size), int(grid)
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, kernel_size=1), nn.ReLU(inplace=True))
        n_in = 2 * width * grid * grid + 2 * width + 8 + 2 * CORNER_FEATURES
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        base = base_box(input_size, search_factor)
        self.register_buffer("base", base)
        # lattice offsets inside a box, as fractions of its width / height (cell centres)
        steps = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        self.register_buffer("steps", steps)
        # calibration: knots (2, K) on the raw sigmoid output and the calibrated values there (identity)
        knots = torch.linspace(0.0, 1.0, CALIBRATION_KNOTS)
        self.register_buffer("calib_x", knots.repeat(2, 1))
        self.register_buffer("calib_y", knots.repeat(2, 1))
        # everything the head computes from a box is linear in its corners up to a clamp, a min / max with
        # the (constant) base box, a log and a ratio: a few fixed matrices (derived, not stored) keep the
        # exported graph to a few dozen nodes
        for name, value in _box_maps(base, steps, float(input_size)).items():
            self.register_buffer(name, value, persistent=False)
        fine = corner_stride != stride
        cells = input_size // (stride // 2 if fine else stride)
        for name, value in _corner_maps(base, cells, *map_grid(float(stride), fine)).items():
            self.register_buffer(name, value, persistent=False)

    def corner_features(self, corner_prob: torch.Tensor) -> torch.Tensor:
        """(B,2,H,W) corner probability maps -> (B, 2 * CORNER_FEATURES): per corner (top-left, then
        bottom-right) the mean offset from the base box's corner (x, y), the spread (x, y), the offset in
        spreads (x, y), both in base-box widths, the log of the mass near the base corner (two widths) and
        the log of the peak probability."""
        prob = corner_prob.float().flatten(2).unsqueeze(2)                  # (B,2,1,HW)
        moments = (prob @ self.corner_moments).squeeze(2)                   # (B,2,6)
        mean = moments[..., 0:2]
        spread = torch.sqrt((moments[..., 2:4] - mean * mean).clamp(min=0.0) + 1e-6)
        near = torch.log(moments[..., 4:6] + 1e-4)
        peak = torch.log(prob.amax(dim=-1) + 1e-4)                          # (B,2,1)
        feats = torch.cat((mean, spread, mean / (spread + self.corner_cell), near, peak), dim=2)
        return feats.flatten(1)

    def raw(self, fused: torch.Tensor, boxes: torch.Tensor, score: torch.Tensor,
            corner_prob: torch.Tensor) -> torch.Tensor:
        """The two logits (B,2) before sigmoid and calibration (what training regresses)."""
        feat = self.reduce(fused.to(self.base.dtype))  # the head runs in its own precision (fp32 in every backend)
        boxes = boxes.float()
        c, g = int(feat.shape[1]), self.grid
        # both lattices (refined box: rows 0..g-1, base box: rows g..2g-1) in grid_sample's [-1, 1]
        lattice = _affine(boxes, self.grid_map, self.grid_offset).reshape(-1, 2 * g, g, 2)
        sampled = F.grid_sample(feat, lattice, mode="bilinear", padding_mode="zeros", align_corners=False)
        pooled = sampled.reshape(-1, c, 2, g * g).transpose(1, 2).reshape(-1, 2 * c * g * g)
        sides = boxes @ self.side_map                               # (B,2) width, height
        wh = sides.clamp(min=1.0)
        corners = torch.maximum(boxes * self.corner_sign, self.base_signed) * self.corner_sign  # intersection
        overlap = (corners @ self.side_map).clamp(min=0.0).prod(dim=1)
        union = sides.clamp(min=0.0).prod(dim=1) + self.base_area - overlap
        geometry = torch.cat((_affine(boxes, self.centre_map, self.centre_offset), torch.log(wh / self.base_side),
                              (overlap / union.clamp(min=1e-6)).unsqueeze(1), score.float().unsqueeze(1),
                              wh / float(self.input_size)), dim=1)
        x = torch.cat((pooled, feat.mean(dim=(2, 3)), feat.amax(dim=(2, 3)), geometry,
                       self.corner_features(corner_prob)), dim=1)
        return self.mlp(x)

    def calibrate(self, prob: torch.Tensor) -> torch.Tensor:
        """(B,2) raw probabilities -> calibrated, through each output's piecewise-linear map (a sum of
        clamped ramps: no search, so it exports as plain min / max / matmul)."""
        x0, x1 = self.calib_x[:, :-1], self.calib_x[:, 1:]            # (2, K-1)
        slope = (self.calib_y[:, 1:] - self.calib_y[:, :-1]) / (x1 - x0).clamp(min=1e-6)
        ramps = torch.minimum(torch.maximum(prob.unsqueeze(-1), x0), x1) - x0  # (B, 2, K-1)
        return ((ramps * slope).sum(dim=-1) + self.calib_y[:, 0]).clamp(0.0, 1.0)

    def forward(self, fused: torch.Tensor, boxes: torch.Tensor, score: torch.Tensor,
                corner_prob: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``quality`` and ``base_quality``, (B,) each, calibrated, in [0, 1]."""
        out = self.calibrate(torch.sigmoid(self.raw(fused, boxes, score, corner_prob).float()))
        return {"quality": out[:, 0], "base_quality": out[:, 1]}

    def set_calibration(self, knots: Sequence[Sequence[float]], values: Sequence[Sequence[float]]) -> None:
        """Store the calibration maps: per output (``quality``, ``base_quality``), ``CALIBRATION_KNOTS``
        increasing raw-probability knots from 0 to 1 and the non-decreasing calibrated values there."""
        x = torch.as_tensor(knots, dtype=torch.float32)
        y = torch.as_tensor(values, dtype=torch.float32)
        if x.shape != self.calib_x.shape or y.shape != self.calib_y.shape:
            raise ValueError(f"calibration needs {tuple(self.calib_x.shape)} knots and values, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if bool((x[:, 1:] <= x[:, :-1]).any()) or bool((y[:, 1:] < y[:, :-1]).any()):
            raise ValueError("calibration knots must increase and values must not decrease")
        with torch.no_grad():
            self.calib_x.copy_(x)
            self.calib_y.copy_(y)
