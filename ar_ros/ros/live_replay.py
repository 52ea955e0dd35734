"""Live replay through the real node: a bag player, the refiner node, and a recorder of its outputs.

``ros2 bag`` is not always at hand (and is not deterministic at high rates); this plays a bag's image
and base-detection topics with their recorded timing (scaled by ``rate``, or as fast as the node keeps
up with ``rate=0``), runs the refiner node in the same process on its own executor thread, records
``refined/detections`` into a new bag, and reports frames received, dropped and end-to-end latency.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from ..engine.masks import DEFAULT_BOX_MODE
from ..options import DEFAULTS
from ..eval import bags
from ..io.detections import stamp_to_ns
from ..progress import progress_bar
from .node import RefinerNode


@dataclass
class LiveReport:
    published: int = 0
    received: int = 0
    latencies_ms: List[float] = field(default_factory=list)
    output: Optional[Path] = None
    refined: Dict[int, Detection2DArray] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.published - self.received

    def summary(self) -> Dict[str, float]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {"published": self.published, "received": self.received, "dropped": self.dropped,
                "latency_ms_p50": float(np.nanpercentile(lat, 50)), "latency_ms_p95": float(np.nanpercentile(lat, 95))}


def live_replay(bag: Union[str, Path], out: Union[str, Path, None] = None, checkpoint: Optional[str] = None,
                device: str = "cpu", rate: float = 1.0, detections_topic: str = bags.BASE_TOPIC,
                image_topic: Optional[str] = None, settle: float = 3.0, domain_id: Optional[int] = None,
                overwrite: bool = False, progress: bool = True, backend: str = "torch", precision: str = "auto",
                threads: int = 0, box_mode: str = DEFAULT_BOX_MODE, keep_iou: float = 0.0,
                quality_margin: float = DEFAULTS["quality_margin"]) -> LiveReport:
    """Play ``bag`` into a fresh refiner node and record what it publishes (see the module docstring).

    ``checkpoint``, ``device``, ``backend``, ``precision``, ``threads``, ``box_mode``, ``keep_iou`` and
    ``quality_margin`` are the node's parameters of those names. A bag of sensor_msgs/CompressedImage is played
    on ``image/compressed`` to a node with ``image_transport: compressed``, as a robot's compressed camera
    stream would be.
    """
    if not rate >= 0:  # NaN included
        raise ValueError(f"rate must be >= 0 (1 = as recorded, 0 = as fast as the node keeps up), got {rate}")
    store = bags.typestore()
    reader = bags.open_reader(bag)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id) if domain_id is not None else rclpy.init(context=ctx)
    report = LiveReport()
    sent_at: Dict[int, float] = {}
    done = threading.Event()
    try:
        image_conns = [c for c in reader.connections if c.msgtype in (bags.IMAGE_TYPE, bags.COMPRESSED_TYPE)
                       and (image_topic is None or c.topic == image_topic)]
        if not image_conns:
            raise bags.BagError(f"{bag}: no image topic")
        image_conn = sorted(image_conns, key=lambda c: c.msgtype != bags.IMAGE_TYPE)[0]
        compressed = image_conn.msgtype == bags.COMPRESSED_TYPE
        image_type = CompressedImage if compressed else Image
        params = [Parameter("device", value=device), Parameter("backend", value=backend),
                  Parameter("precision", value=precision), Parameter("threads", value=int(threads)),
                  Parameter("box_mode", value=box_mode), Parameter("keep_iou", value=float(keep_iou)),
                  Parameter("quality_margin", value=float(quality_margin)),
                  Parameter("image_transport", value="compressed" if compressed else "raw"),
                  Parameter("publish_overlay", value=False), Parameter("image_cache_size", value=60)]
        if checkpoint:
            params.append(Parameter("checkpoint", value=str(checkpoint)))
        refiner = RefinerNode(context=ctx, parameter_overrides=params, namespace="/replay")
        refiner.trigger_configure()
        if refiner.refiner is None:
            raise RuntimeError("the refiner node failed to configure (see the log above)")
        refiner.trigger_activate()
        node_exec = SingleThreadedExecutor(context=ctx)
        node_exec.add_node(refiner)
        spinner = threading.Thread(target=lambda: _spin(node_exec, done), daemon=True)
        spinner.start()

        player = Node("ar_ros_player", context=ctx)
        img_pub = player.create_publisher(image_type, "/replay/image/compressed" if compressed else "/replay/image",
                                          QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        det_pub = player.create_publisher(Detection2DArray, "/replay/detections", 10)

        def on_refined(msg: Detection2DArray) -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            if stamp in sent_at and stamp not in report.refined:
                report.refined[stamp] = msg
                report.received += 1
                report.latencies_ms.append((time.monotonic() - sent_at[stamp]) * 1e3)
        player.create_subscription(Detection2DArray, "/replay/refined/detections", on_refined, 100)
        play_exec = SingleThreadedExecutor(context=ctx)
        play_exec.add_node(player)
        end = time.monotonic() + 20
        while time.monotonic() < end and (img_pub.get_subscription_count() == 0 or det_pub.get_subscription_count() == 0):
            play_exec.spin_once(timeout_sec=0.05)

        bar = progress_bar(image_conn.msgcount, f"live replay {Path(bag).name}", enabled=progress)
        first_t, wall0 = None, time.monotonic()
        conns = [image_conn] + [c for c in reader.connections if c.topic == detections_topic]
        for conn, t, raw in reader.messages(connections=conns):
            if first_t is None:
                first_t = t
            if rate > 0:
                due = wall0 + (t - first_t) / 1e9 / rate
                while time.monotonic() < due:
                    play_exec.spin_once(timeout_sec=max(0.0, min(0.01, due - time.monotonic())))
            if conn.id == image_conn.id:
                msg = deserialize_message(bytes(raw), image_type)
                if rate <= 0:  # as fast as the node keeps up: wait for the previous frame's output
                    _wait_for(play_exec, lambda: report.received >= report.published, 5.0)
                sent_at[stamp_to_ns(msg.header.stamp)] = time.monotonic()
                img_pub.publish(msg)
                report.published += 1
                bar.update(1)
            else:
                det_pub.publish(deserialize_message(bytes(raw), Detection2DArray))
            play_exec.spin_once(timeout_sec=0.0)
        _wait_for(play_exec, lambda: report.received >= report.published, settle)
        bar.close()
        done.set()
        spinner.join(timeout=5.0)
        if out is not None:
            with bags.atomic_bag(out, "sqlite3", overwrite) as writer:
                conn = writer.add_connection(bags.REFINED_TOPIC, bags.DETECTIONS_TYPE, typestore=store)
                for stamp in sorted(report.refined):
                    writer.write(conn, stamp, serialize_message(report.refined[stamp]))
            report.output = Path(out)
        play_exec.shutdown()
        node_exec.shutdown()
        player.destroy_node()
        refiner.destroy_node()
        return report
    finally:
        done.set()
        reader.close()
        rclpy.try_shutdown(context=ctx)


def _spin(executor: SingleThreadedExecutor, done: threading.Event) -> None:
    while not done.is_set():
        executor.spin_once(timeout_sec=0.05)


def _wait_for(executor: SingleThreadedExecutor, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)
    return predicate()
