#!/usr/bin/env python3
"""4 cameras x 2 targets at 640x480: one multi-camera node vs 4 single-camera node processes.

Starts the installed node executable (as launch would) either once with `cameras: [c0..c3]` or four
times with remaps, feeds every camera from this process at --rate Hz for --seconds, and reports, in one
run, refined frames per second in total, p50/p95 latency per camera (publish -> refined/detections)
and the nodes' total resident memory.

    source tools/setup_env.sh && python benchmarks/bench_multi_camera.py [--rate 10] [--seconds 20]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from ros_helpers import detections_msg, image_msg, spin_until  # noqa: E402

CAMS = ["c0", "c1", "c2", "c3"]


def executable() -> str:
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        exe = Path(prefix) / "lib" / "ar_ros" / "ar_ros"
        if exe.is_file():
            return str(exe)
    sys.exit("ar_ros is not installed: source tools/setup_env.sh")


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return float("nan")


def start(multi: bool, tmp: Path):
    procs = []
    if multi:
        params = tmp / "multi.yaml"
        params.write_text("/**:\n  ros__parameters:\n    device: cpu\n    cameras: [" + ", ".join(CAMS) + "]\n")
        procs.append(subprocess.Popen([executable(), "--ros-args", "--params-file", str(params)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    else:
        params = tmp / "single.yaml"
        params.write_text("/**:\n  ros__parameters:\n    device: cpu\n")
        for cam in CAMS:
            procs.append(subprocess.Popen([executable(), "--ros-args", "--params-file", str(params),
                                           "-r", f"__node:=ar_ros_{cam}", "-r", f"__ns:=/{cam}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def run(multi: bool, rate: float, seconds: float, tmp: Path) -> dict:
    procs = start(multi, tmp)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = Node("bench_cameras", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    sent, got = {c: {} for c in CAMS}, {c: {} for c in CAMS}
    pubs = {}
    for cam in CAMS:
        pubs[cam] = (node.create_publisher(Image, f"/{cam}/image", 10),
                     node.create_publisher(Detection2DArray, f"/{cam}/detections", 10))
        node.create_subscription(Detection2DArray, f"/{cam}/refined/detections",
                                 lambda m, c=cam: got[c].setdefault(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                                                                    time.perf_counter()), 50)
    try:
        # each node builds its CPU graphs (1..max_targets) before it subscribes: four nodes on a shared
        # 2-core machine take minutes
        ok = spin_until(ex, lambda: all(p.get_subscription_count() for pair in pubs.values() for p in pair)
                        and all(node.count_publishers(f"/{c}/refined/detections") for c in CAMS), 300.0)
        if not ok:
            raise RuntimeError("nodes did not come up")
        rng = np.random.default_rng(0)
        background = rng.integers(0, 80, (480, 640, 3), dtype=np.uint8)
        n = int(rate * seconds)
        t_start = time.perf_counter()
        for i in range(n):
            due = t_start + i / rate
            while time.perf_counter() < due:
                ex.spin_once(timeout_sec=max(0.0, min(0.005, due - time.perf_counter())))
            frame = background.copy()
            x = 60 + (i % 200)
            frame[200:260, x:x + 80] = (40, 200, 230)
            frame[300:380, 500 - (i % 200):560 - (i % 200)] = (230, 60, 200)
            stamp = 10**9 + i * 10**7
            for cam in CAMS:
                sent[cam][stamp] = time.perf_counter()
                pubs[cam][0].publish(image_msg(frame, stamp // 10**9, stamp % 10**9, encoding="bgr8"))
                pubs[cam][1].publish(detections_msg([("a", (x - 2.0, 198.0, 84.0, 64.0)),
                                                     ("b", (498.0 - (i % 200), 300.0, 60.0, 80.0))],
                                                    stamp // 10**9, stamp % 10**9))
        spin_until(ex, lambda: False, 2.0)
        elapsed = time.perf_counter() - t_start
        memory = sum(rss_mb(p.pid) for p in procs)
        per_cam = {}
        for cam in CAMS:
            lat = [(got[cam][s] - sent[cam][s]) * 1e3 for s in got[cam] if s in sent[cam]]
            per_cam[cam] = {"refined": len(lat), "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
                            "p95_ms": float(np.percentile(lat, 95)) if lat else float("nan")}
        return {"mode": "one multi-camera node" if multi else "4 single-camera nodes",
                "sent_per_camera": n, "refined_fps_total": sum(v["refined"] for v in per_cam.values()) / elapsed,
                "rss_mb_total": memory, "cameras": per_cam}
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ar_ros_mc_"))
    results = [run(True, args.rate, args.seconds, tmp), run(False, args.rate, args.seconds, tmp)]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        lat = ", ".join(f"{c} {v['p50_ms']:.0f}/{v['p95_ms']:.0f}" for c, v in r["cameras"].items())
        print(f"{r['mode']:24s} refined fps total {r['refined_fps_total']:6.1f}   RSS {r['rss_mb_total']:7.0f} MB   "
              f"latency p50/p95 ms: {lat}")
    multi, single = results
    print(f"\nthroughput ratio multi/single: {multi['refined_fps_total'] / single['refined_fps_total']:.2f}x   "
          f"memory ratio: {multi['rss_mb_total'] / single['rss_mb_total']:.2f}x")


if __name__ == "__main__":
    main()
