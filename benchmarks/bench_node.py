#!/usr/bin/env python3
"""ROS overhead of the refiner node over the engine, and memory over a long run (needs the ROS setup).

Publishes 640x480 bgr8 frames + detections into an in-process RefinerNode in lockstep (next frame
after the previous output). After each frame's output arrives, the same frame and boxes go through the
engine alone (RefineSession.step, as a non-ROS user calls it). Node overhead = median over frames of
(end-to-end time publish -> refined/detections received) - (that frame's engine time): everything the
node adds, including the camera-side publish and DDS transport of the 900 KB image. Also printed: the
overhead over the node's own refine time (RefinedTargetArray.refine_ms) and resident memory growth.

    source tools/setup_env.sh && python benchmarks/bench_node.py [--frames 2000] [--targets 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from ar_ros.msg import RefinedTargetArray
from ar_ros.ros.executor import make_executor
from ar_ros.ros.node import RefinerNode


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--targets", type=int, default=1)
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--compare-every", type=int, default=1,
                    help="time the engine alone after every N-th frame (1 = every frame)")
    ap.add_argument("--executor", default="events", choices=["events", "single"],
                    help="rclpy EventsExecutor (what the ar_ros executable uses where rclpy has it) or "
                         "SingleThreadedExecutor")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import sys
    sys.path.insert(0, "test")
    from ros_helpers import detections_msg, image_msg, spin_until

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = RefinerNode(context=ctx, parameter_overrides=[Parameter("device", value="cpu"),
                                                         Parameter("checkpoint", value=args.checkpoint),
                                                         Parameter("max_targets", value=max(8, args.targets))])
    node.trigger_configure()
    node.trigger_activate()
    bench = Node("bench", context=ctx)
    os.environ["AR_ROS_EXECUTOR"] = args.executor  # the executables' own choice (events falls back on Humble)
    ex = make_executor(context=ctx)
    ex.add_node(node)
    ex.add_node(bench)
    outs, targets = {}, {}
    bench.create_subscription(Detection2DArray, "refined/detections",
                              lambda m: outs.setdefault((m.header.stamp.sec, m.header.stamp.nanosec), time.perf_counter()), 10)
    bench.create_subscription(RefinedTargetArray, "refined/targets",
                              lambda m: targets.setdefault((m.header.stamp.sec, m.header.stamp.nanosec), m.refine_ms), 10)
    img_pub = bench.create_publisher(Image, "image", 10)
    det_pub = bench.create_publisher(Detection2DArray, "detections", 10)
    spin_until(ex, lambda: img_pub.get_subscription_count() and det_pub.get_subscription_count()
               and node.camera.pubs["detections"].get_subscription_count(), 10)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 80, (480, 640, 3), dtype=np.uint8)
    e2e, own, engine, paired, memory, pub_ms = [], [], [], [], [], []
    boxes = [(f"t{k}", (60.0 + 70 * k, 200.0, 80.0, 60.0)) for k in range(args.targets)]
    session = node.session
    for i in range(args.frames):
        frame = background.copy()
        x = 60 + (i % 100)
        frame[200:260, x:x + 80] = (40, 200, 230)
        sec, nsec = 1 + i // 100, (i % 100) * 10_000_000
        img = image_msg(frame, sec, nsec, encoding="bgr8")
        inputs = [(tid, (b[0] + i % 100, b[1], b[2], b[3])) for tid, b in boxes]
        dets = detections_msg(inputs, sec, nsec)
        t0 = time.perf_counter()
        img_pub.publish(img)
        det_pub.publish(dets)
        published_ms = (time.perf_counter() - t0) * 1e3
        key = (sec, nsec)
        if not spin_until(ex, lambda: key in outs and key in targets, 10.0):
            continue
        total = (outs[key] - t0) * 1e3
        e2e.append(total)
        own.append(total - targets[key])
        pub_ms.append(published_ms)
        if i % args.compare_every == 0:  # the engine alone, right after, on the same frame and boxes
            t0 = time.perf_counter()
            with node.refiner_lock:
                session.step(frame, inputs, stamp_ns=sec * 1_000_000_000 + nsec, color="bgr")
            engine.append((time.perf_counter() - t0) * 1e3)
            paired.append(total - engine[-1])
        if i % 100 == 0:
            memory.append(rss_mb())
    warm = max(1, len(memory) // 10)
    result = {
        "frames": args.frames, "refined": len(e2e), "targets": args.targets, "executor": type(ex).__name__,
        "end_to_end_ms_median": statistics.median(e2e), "engine_ms_median": statistics.median(engine),
        "node_overhead_ms_median": statistics.median(paired),
        "node_overhead_ms_p95": float(np.percentile(paired, 95)),
        "overhead_over_own_refine_ms_median": statistics.median(own),
        "camera_publish_ms_median": statistics.median(pub_ms),
        "rss_mb_start": memory[warm] if len(memory) > warm else float("nan"),
        "rss_mb_end": memory[-1] if memory else float("nan"),
    }
    result["rss_growth_pct"] = (result["rss_mb_end"] / result["rss_mb_start"] - 1) * 100
    ex.shutdown()
    bench.destroy_node()
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v:.2f}" if isinstance(v, float) else f"{k:28s} {v}")


if __name__ == "__main__":
    main()
