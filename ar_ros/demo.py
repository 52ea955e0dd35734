"""The one-command demo: a sample sequence -> rosbag -> refiner -> accuracy table, plots and a video.

Runs on a fresh machine with no camera and no download: the sequence is synthetic and the model is
the one shipped in ``ar_ros/weights``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .engine.masks import DEFAULT_BOX_MODE
from .engine.refiner import Refiner
from .eval import bags, report
from .data.base_trackers import jittered_gt, run_opencv
from .eval.replay import replay
from .data.synthetic import Sequence
from .options import loop_gates

DEMO_SEED = 100_003
DEMO_FRAMES = 90


def run(out_dir: str = "out/demo", checkpoint: Optional[str] = None, frames: int = DEMO_FRAMES,
        seed: int = DEMO_SEED, base: str = "csrt", device: str = "cpu", progress: bool = True,
        backend: str = "torch", precision: str = "fp32", box_mode: str = DEFAULT_BOX_MODE,
        keep_iou: Optional[float] = None, quality_margin: Optional[float] = None, live: bool = True) -> Dict:
    """Build the sample bag, replay it through the refiner, print and write the results.

    The keep gates ``keep_iou`` and ``quality_margin`` None: the default of each loop
    (``options.loop_gates``). ``live``: also play the jittered-GT bag through the ROS 2 node (when rclpy is
    there)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model: Dict[str, Any]  # Refiner keyword arguments of several types
    model = {"checkpoint": checkpoint, "device": device, "backend": backend, "precision": precision,
             "box_mode": box_mode}
    gates = {"keep_iou": keep_iou, "quality_margin": quality_margin}
    model.update(loop_gates("open", gates))
    refiner = Refiner(**model)
    print(f"[demo] model: {refiner.meta.get('source', checkpoint or 'built-in default')} "
          f"({refiner.config.backbone_title}, {refiner.config.input_size}px crops, {refiner.crop_mode} crop)")
    seq = Sequence(seed, frames, (640, 480))
    rendered = list(seq)
    gt = [f.box for f in rendered]
    print(f"[demo] sample sequence: {frames} frames 640x480, synthetic seed {seed}")
    bases = {"jitter": jittered_gt(gt, seed)}
    if base != "jitter":
        bases[base] = run_opencv((f.image for f in rendered), gt[0], base)
    summary: Dict = {"frames": frames, "seed": seed, "results": {}}
    for name, boxes in bases.items():
        bags.write_sequence(out / f"sample_{name}.bag", (f.image for f in rendered), boxes, gt, fps=15.0,
                            overwrite=True)
    # (result name, sample bag, tracker run on the bag, loop); closed: the paper's loop, the tracker is
    # re-seeded with each refined box (its recorded open-loop boxes cannot take the box back)
    runs: List[Tuple[str, str, Optional[str], str]] = [(name, name, None, "open") for name in bases]
    if base != "jitter":
        runs.append((f"{base}_closed", base, base, "closed"))
    for name, sample, tracker, loop in runs:
        for gate, value in loop_gates(loop, gates).items():
            setattr(refiner, gate, value)
        result = replay(out / f"sample_{sample}.bag", refiner, out=out / f"refined_{name}.bag",
                        video=out / f"overlay_{name}.mp4", progress=progress, overwrite=True,
                        base_tracker=tracker, loop=loop)
        gt_arr = np.stack(result.gt)
        base_arr, ref_arr = result.boxes("base"), result.boxes("refined")
        scores = result.scores()  # the replay's rule: the init frame is not scored
        first = result.init_frame() + 1
        print(f"\n[demo] base tracker '{sample}'" + (", closed loop" if loop == "closed" else "") +
              f" ({result.refined_frames} frames refined, "
              f"{result.refined_frames / max(result.seconds, 1e-9):.1f} fps, {result.fallbacks} fallbacks, "
              f"{result.kept} base boxes kept, {result.lost} lost" +
              (f", {result.reseeds} re-seeds" if loop == "closed" else "") + ")")
        print(report.table(scores))
        report.plot_curves(out / f"success_{name}.png", {"base": (base_arr[first:], gt_arr[first:]),
                                                         "refined": (ref_arr[first:], gt_arr[first:])},
                           title=f"ar_ros demo: base '{name}' vs refined")
        report.plot_iou_over_time(out / f"iou_{name}.png", {"base": base_arr, "refined": ref_arr}, gt_arr,
                                  title=f"IoU per frame, base '{name}'")
        summary["results"][name] = {k: v.to_dict() for k, v in scores.items()}
    summary["live"] = _live_chain(out / "sample_jitter.bag", out / "live_refined_jitter.bag", model, progress) \
        if live else None
    report.write_json(out / "summary.json", summary)
    print(f"\n[demo] wrote bags, overlay videos (overlay_*.mp4), plots (success_*.png, iou_*.png) and "
          f"summary.json to {out}/ in {time.perf_counter() - t_start:.0f} s")
    return summary


def _live_chain(bag: Path, out: Path, model: Dict, progress: bool) -> Optional[Dict]:
    """The same bag through the real ROS 2 node at the recorded frame rate, when ROS 2 is available."""
    try:
        from .ros.live_replay import live_replay
    except ImportError as err:
        print(f"\n[demo] skipping the live ROS 2 node chain ({err}); source tools/setup_env.sh to include it")
        return None
    print("\n[demo] live chain: bag player -> ar_ros node -> recorder, at the recorded 15 fps")
    rep = live_replay(bag, out=out, **model, rate=1.0, overwrite=True, progress=progress)
    info = rep.summary()
    print(f"[demo] node refined {info['received']}/{info['published']} frames ({info['dropped']} dropped), "
          f"end-to-end latency p50 {info['latency_ms_p50']:.1f} ms, p95 {info['latency_ms_p95']:.1f} ms")
    return info
