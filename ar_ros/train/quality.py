"""Training the quality head alone (``TrainConfig.quality_only``): every box and mask weight stays as loaded.

The network of ``init_from`` gets a :class:`~ar_ros.model.quality.QualityHead` (or keeps its own, to go
on training it) and only the head learns. The frozen network runs once over a fixed set of pairs from the
refiner's pair sampler (:func:`cached_pairs`) and the head trains on what it saw, with a base-box jitter
that covers right boxes (``small_jitter_prob``), the paper's coarse boxes and boxes off the target
(``far_prob``: the target at the crop's edge or outside it, a distractor under the box). Targets are the
IoUs with the true box of the box the network outputs (the box its default ``box_mode`` makes: corner, or
corner fused with the mask's box) and of the base box; the loss is binary cross-entropy on those soft
targets (a proper scoring rule: its minimum is the expected IoU, so the output is a calibrated estimate
before any calibration map). Frozen weights keep their BatchNorm statistics (the network runs in eval mode).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.masks import crop_mask_box, fuse_boxes, resolve_box_mode
from ..model import AlphaRefineNet, load_checkpoint, save_checkpoint
from ..model.quality import pairwise_iou
from ..progress import progress_bar
from .sampler import PairSampler, SamplerConfig, fixed_batches


def quality_network(path: str) -> AlphaRefineNet:
    """The network of checkpoint ``path`` with a quality head (a new one unless the checkpoint has one)."""
    state, config, _ = load_checkpoint(path)
    net = AlphaRefineNet(replace(config, quality_head=True))
    own = net.state_dict()
    wrong = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"{path}: does not fit its own network config ({len(wrong)} tensors, e.g. {wrong[0]})")
    missing = net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                  strict=False).missing_keys
    if any(not k.startswith("quality_head.") for k in missing):
        raise ValueError(f"{path}: lacks network tensors ({[k for k in missing if 'quality_head' not in k][:3]})")
    return net.eval()


def output_boxes(out: Dict[str, torch.Tensor], box_mode: str) -> torch.Tensor:
    """(B,4) crop-px boxes the engine outputs in ``box_mode`` (``corner`` or ``fused``, resolved) from a
    search output (``fused`` needs its ``mask``)."""
    if box_mode != "fused":
        return out["boxes"].float()
    boxes = [fuse_boxes(box, crop_mask_box(prob)) for box, prob in
             zip(out["boxes"].double().numpy(), out["mask"][:, 0].float().numpy())]
    return torch.tensor(np.array(boxes), dtype=torch.float32)


def quality_targets(net: AlphaRefineNet, batch: Dict[str, torch.Tensor]) -> Tuple[tuple, torch.Tensor, Dict]:
    """Run the frozen network on ``batch``; returns the quality head's inputs (what ``head.raw`` takes),
    the targets (B,2): IoU of the output box and of the base box with the true box, and the search output."""
    head = net.quality_head
    assert head is not None  # quality_network() gives the network its head
    captured: List[tuple] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args))
    box_mode = resolve_box_mode("auto", net.config.mask_head)
    try:
        with torch.no_grad():
            out = net(batch["template"], batch["search"], with_mask=box_mode == "fused")
    finally:
        hook.remove()
    truth = batch["truth"].float()
    targets = torch.stack((pairwise_iou(output_boxes(out, box_mode), truth),
                           pairwise_iou(batch["base"].float(), truth)), dim=1)
    return captured[0], targets, out


def quality_loss(net: AlphaRefineNet, inputs: tuple, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """BCE of the head's raw logits against the IoU targets (both outputs), and the predictions (B,2)."""
    head = net.quality_head
    assert head is not None  # quality_network() gives the network its head
    logits = head.raw(*inputs)
    return F.binary_cross_entropy_with_logits(logits, targets), torch.sigmoid(logits.detach())


def quality_validation(cfg, banks: tuple, sampler_cfg: SamplerConfig, seed: int = 23456,
                       n_batches: int = 0) -> Dict[str, list]:
    """Fixed validation batches by key suffix: synthetic (``""``) and held-out composites (``_real``),
    with the training mix of base boxes; ``seed`` chooses the pairs (another seed: other pairs)."""
    from .composite import composite_pairs
    from .sampler import synthetic_pairs
    from .trainer import VAL_SEEDS
    sources = {"": synthetic_pairs(seed_range=VAL_SEEDS, size=tuple(cfg.frame_size))}
    if banks:
        sources["_real"] = composite_pairs(banks[1], VAL_SEEDS, size=tuple(cfg.frame_size))
    return {suffix: fixed_batches(PairSampler(source, sampler_cfg), seed + i, n_batches or cfg.val_batches,
                                  cfg.batch_size)
            for i, (suffix, source) in enumerate(sources.items())}


def _head_inputs(net: AlphaRefineNet, batch: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    """The head's inputs and targets for one batch, as tensors to keep: the fused map in fp16 (the largest,
    and the head's 1x1 convolution does not need more), then boxes, score, corner maps, targets."""
    inputs, targets, _ = quality_targets(net, batch)
    return [inputs[0].half()] + [t.float() for t in inputs[1:]] + [targets]


def cached_pairs(net: AlphaRefineNet, sampler: PairSampler, folder: Path, n_pairs: int, batch_size: int,
                 seed: int, progress: bool = True, part: int = 64) -> List[torch.Tensor]:
    """Run the frozen network once on ``n_pairs`` training pairs and keep what the head sees (and its
    targets): the head then trains for many epochs at the cost of its own few layers. Written to ``folder``
    in parts of ``part`` batches (batch i drawn with seed (seed, i): a stopped run resumes where it was)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_batches = -(-n_pairs // batch_size)
    n_parts = -(-n_batches // part)
    bar = progress_bar(n_batches, "network on training pairs", unit="batch", enabled=progress, leave=False)
    parts = []
    for k in range(n_parts):
        path = folder / f"part{k:04d}.pt"
        batches = range(k * part, min(n_batches, (k + 1) * part))
        if path.exists():
            parts.append(torch.load(path, weights_only=True))
            bar.update(len(batches))
            continue
        rows = []
        for i in batches:
            rows.append(_head_inputs(net, sampler.batch(np.random.default_rng([seed, i]), batch_size)))
            bar.update(1)
        parts.append([torch.cat(column) for column in zip(*rows)])
        torch.save(parts[-1], path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    bar.close()
    return [torch.cat(column)[:n_pairs] for column in zip(*parts)]


def head_loss(net: AlphaRefineNet, rows: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """BCE of the head on cached rows (:func:`cached_pairs`), and the predictions (B,2)."""
    *inputs, targets = rows
    return quality_loss(net, (inputs[0].float(), *inputs[1:]), targets)


def train_quality(cfg, progress: bool = True) -> Path:
    """Train (or resume) the quality head of ``cfg.init_from``'s network; returns ``<out_dir>/final.pt``.

    The network runs once on ``cfg.quality_pairs`` training pairs (:func:`cached_pairs`, kept under
    ``<out_dir>/pairs``); each epoch is then one pass of the head over them in batches of
    ``cfg.batch_size``, in a new order."""
    from .trainer import data_description, real_photo_banks, training_source, uses_photos
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    last = out / "last.pt"
    net = quality_network(str(last) if last.exists() else cfg.init_from)
    net.requires_grad_(False)
    head = net.quality_head
    assert head is not None  # quality_network() gives the network its head
    head.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    start_epoch, history = 0, []
    if last.exists():
        raw = torch.load(last, map_location="cpu", weights_only=True)
        opt.load_state_dict(raw["train_state"]["optimizer"])
        sched.load_state_dict(raw["train_state"]["scheduler"])
        start_epoch, history = int(raw["train_state"]["epoch"]), list(raw["meta"].get("history", []))
        print(f"resuming from {last} at epoch {start_epoch}", flush=True)
    banks = real_photo_banks(out) if uses_photos(cfg.data) else ()
    sampler_cfg = SamplerConfig(input_size=net.config.input_size, search_factor=net.config.search_factor,
                                small_jitter_prob=cfg.small_jitter_prob, far_prob=cfg.far_prob)
    sampler = PairSampler(training_source(cfg, banks), sampler_cfg)
    net.eval()  # frozen BatchNorm statistics; the head has none
    pairs = cached_pairs(net, sampler, out / "pairs", cfg.quality_pairs, cfg.batch_size, cfg.seed, progress)
    val = {suffix: [torch.cat(c) for c in zip(*(_head_inputs(net, b) for b in batches))]
           for suffix, batches in quality_validation(cfg, banks, sampler_cfg).items()}
    best = min((h["val_score"] for h in history), default=float("inf"))
    meta = {"train_config": asdict(cfg), "data": data_description(cfg),
            "quality_target": "IoU with the true box of the box box_mode 'auto' outputs, and of the base box"}
    n = len(pairs[0])
    with open(out / "train_log.jsonl", "a") as log:
        for epoch in range(start_epoch, cfg.epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            t0, total, steps = time.time(), 0.0, 0
            for i in range(0, n, cfg.batch_size):
                loss, _ = head_loss(net, [column[order[i:i + cfg.batch_size]] for column in pairs])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            sched.step()
            record = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 1), "lr": opt.param_groups[0]["lr"],
                      "loss": total / steps}
            with torch.no_grad():
                for suffix, rows in val.items():
                    loss, pred = head_loss(net, rows)
                    err = (pred - rows[-1]).abs()
                    record.update({"val_loss" + suffix: float(loss), "val_mae_quality" + suffix: float(err[:, 0].mean()),
                                   "val_mae_base" + suffix: float(err[:, 1].mean())})
            record["val_score"] = float(np.mean([v for k, v in record.items() if k.startswith("val_loss")]))
            history.append(record)
            if progress:
                print(json.dumps(record), flush=True)
            log.write(json.dumps(record) + "\n")
            log.flush()
            save_checkpoint(last, net, meta={**meta, "history": history},
                            extra={"train_state": {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                   "epoch": epoch + 1}})
            if record["val_score"] < best:  # chosen on validation pairs only
                best = record["val_score"]
                save_checkpoint(out / "best.pt", net, meta={**meta, "history": history})
    final = out / "final.pt"
    save_checkpoint(final, net, meta={**meta, "history": history})
    return final
