"""Training loop: Adam + step LR, atomic checkpoints with resume, per-epoch validation, optional DDP.

Run on one process, or with ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA); rank 0 writes
checkpoints and logs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.distributed as dist

from ..model import AlphaRefineNet, NetConfig, load_checkpoint, save_checkpoint
from ..progress import progress_bar
from .losses import box_iou_xyxy, refine_loss
from .sampler import PairSampler, SamplerConfig, dataset_pairs, fixed_batches, mixed_pairs, synthetic_pairs

VAL_SEEDS = (95_000, 99_000)  # held out from training seeds and from the reference suites


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    depth: int = 18
    input_size: int = 128
    batch_size: int = 16
    epochs: int = 10
    iters_per_epoch: int = 200
    lr: float = 1e-3
    lr_step: int = 4               # epochs per halving (authors: 8 of 40)
    lr_gamma: float = 0.5
    mask_weight: float = 1000.0
    val_batches: int = 8
    seed: int = 0
    frame_size: List[int] = field(default_factory=lambda: [320, 240])
    backbone_weights: str = ""     # optional torchvision-format ImageNet ResNet file
    data: List[str] = field(default_factory=lambda: ["synthetic"])  # "synthetic" or "<dataset>:<folder>"
    threads: int = 0               # torch CPU threads (0 = torch default)


def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def training_source(cfg: TrainConfig):
    """The pair source for ``cfg.data``: synthetic and/or dataset folders, mixed evenly."""
    from ..eval.datasets import open_dataset
    sources = []
    for item in cfg.data:
        if item == "synthetic":
            sources.append(synthetic_pairs(size=tuple(cfg.frame_size)))
            continue
        kind, sep, root = item.partition(":")
        if not sep:
            raise ValueError(f"data entries are 'synthetic' or '<dataset>:<folder>', got {item!r}")
        sources.append(dataset_pairs(open_dataset(kind, root)))
    if not sources:
        raise ValueError("no training data given")
    return sources[0] if len(sources) == 1 else mixed_pairs(sources)


def load_backbone_weights(net: AlphaRefineNet, path: str) -> int:
    """Copy matching tensors of a torchvision ResNet state_dict into the backbone; returns the count."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.feature_extractor.state_dict()
    hits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not hits:
        raise ValueError(f"{path}: no tensor matches the ResNet-{net.config.depth} backbone")
    net.feature_extractor.load_state_dict(hits, strict=False)
    return len(hits)


def evaluate(net: torch.nn.Module, batches: list) -> Dict[str, float]:
    """Mean IoU of refined vs GT boxes (and of the jittered base boxes) in search-crop pixels."""
    was_training = net.training
    net.eval()
    ious, base_ious = [], []
    with torch.inference_mode():
        for b in batches:
            out = net(b["template"], b["search"], with_mask=False)
            ious.append(box_iou_xyxy(out["boxes"], b["target"]))
            base_ious.append(box_iou_xyxy(b["base"], b["target"]))
    net.train(was_training)
    return {"val_iou": float(torch.cat(ious).mean()), "base_iou": float(torch.cat(base_ious).mean())}


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) and return the path of the final checkpoint ``<out_dir>/final.pt``."""
    _maybe_init_distributed()
    rank, world = _world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = AlphaRefineNet(NetConfig(depth=cfg.depth, input_size=cfg.input_size, with_top=False, crop_mode="clean"))
    if cfg.backbone_weights:
        load_backbone_weights(net, cfg.backbone_weights)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    start_epoch, history = 0, []
    last = out / "last.pt"
    if last.exists():
        state, _, meta = load_checkpoint(last)
        net.load_state_dict(state)
        raw = torch.load(last, map_location="cpu", weights_only=True)
        opt.load_state_dict(raw["train_state"]["optimizer"])
        sched.load_state_dict(raw["train_state"]["scheduler"])
        start_epoch, history = int(raw["train_state"]["epoch"]), list(meta.get("history", []))
        if rank == 0:
            print(f"resuming from {last} at epoch {start_epoch}")
    model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if world > 1 else net
    sampler = PairSampler(training_source(cfg), SamplerConfig(input_size=cfg.input_size))
    val = fixed_batches(sampler, 12345, cfg.val_batches, cfg.batch_size,
                        source=synthetic_pairs(seed_range=VAL_SEEDS, size=tuple(cfg.frame_size)))
    log = open(out / "train_log.jsonl", "a") if rank == 0 else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch, rank])
            net.train()
            bar = progress_bar(cfg.iters_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
                               enabled=progress and rank == 0, leave=False)
            t0, sums = time.time(), {}
            for it in range(cfg.iters_per_epoch):
                batch = sampler.batch(rng, cfg.batch_size)
                loss, parts = refine_loss(model(batch["template"], batch["search"], with_mask=True), batch,
                                          cfg.mask_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.1f}")
            bar.close()
            sched.step()
            if rank == 0:
                record = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 1),
                          "lr": opt.param_groups[0]["lr"],
                          **{k: v / cfg.iters_per_epoch for k, v in sums.items()}, **evaluate(net, val)}
                history.append(record)
                print(json.dumps(record), flush=True)
                log.write(json.dumps(record) + "\n")
                log.flush()
                save_checkpoint(last, net, meta={"history": history, "train_config": asdict(cfg)},
                                extra={"train_state": {"optimizer": opt.state_dict(),
                                                       "scheduler": sched.state_dict(), "epoch": epoch + 1}})
            if world > 1:
                dist.barrier()
        final = out / "final.pt"
        if rank == 0:
            save_checkpoint(final, net, half=True, meta={"history": history, "train_config": asdict(cfg),
                                                         "data": "synthetic (ar_ros.eval.synthetic)"})
        return final
    finally:
        if log is not None:
            log.close()
