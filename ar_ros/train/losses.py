"""The authors' loss: MSE on corner pixels + 1000 x BCE on masks where masks exist."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from ..model.quality import pairwise_iou


def refine_loss(out: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
                mask_weight: float = 1000.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Return the total loss and its parts (floats, for logging)."""
    corner = F.mse_loss(out["boxes"], batch["target"])
    total = corner
    parts = {"corner_mse": float(corner.detach())}
    if "mask" in out and float(batch["has_mask"].sum()) > 0:
        keep = batch["has_mask"] > 0
        bce = F.binary_cross_entropy(out["mask"][keep].clamp(1e-6, 1 - 1e-6), batch["mask"][keep])
        total = total + mask_weight * bce
        parts["mask_bce"] = float(bce.detach())
    parts["total"] = float(total.detach())
    return total, parts


def box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of (N,4) x1,y1,x2,y2 boxes (``model.quality.pairwise_iou``)."""
    return pairwise_iou(a, b)
