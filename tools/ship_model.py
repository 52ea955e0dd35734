#!/usr/bin/env python3
"""Copy a training checkpoint into the package as the shipped default (fp16 storage, history kept).

    python tools/ship_model.py runs/default/last.pt
"""
import sys

from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.model import load_network, save_checkpoint


def main() -> None:
    src = sys.argv[1] if len(sys.argv) > 1 else "runs/default/final.pt"
    net, meta = load_network(src)
    history = meta.get("history", [])
    out = save_checkpoint(DEFAULT_CHECKPOINT, net, half=True, meta={
        "history": history, "train_config": meta.get("train_config", {}),
        "data": "synthetic (ar_ros.eval.synthetic), seeds 0..90000; no real images",
        "epochs": len(history)})
    print(f"shipped {src} (epoch {len(history)}, val IoU {history[-1]['val_iou'] if history else 'n/a'}) "
          f"-> {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
