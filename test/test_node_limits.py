"""Bounded work per message, seen from outside: the installed node in its own process, a client in this one.

Hostile but well-formed input (a flood of service calls, 1000 id-less boxes in one message, 1x1 frames, a
tiny PNG that decodes to 10000x10000, bytes that are no Detection2DArray) must cost bounded time and
memory, be counted in /diagnostics, and never cost another camera its frames.
"""
import struct
import time
import zlib

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from ar_ros.msg import RefinedTargetArray  # noqa: E402
from ar_ros.srv import SetTarget  # noqa: E402
from ros_helpers import bbox, detections_msg, image_msg, spin_until, stamp  # noqa: E402
from test_node_process import read_log, start_node, stop  # noqa: E402

pytestmark = pytest.mark.ros
BOX = (100.0, 80.0, 60.0, 50.0)
FAST_DIAG = "    diagnostics_period: 0.2\n"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024.0


def frame(width=320, height=240):
    img = np.random.default_rng(2).integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    img[80:130, 100:160] = (220, 180, 40)
    return img


def png(width: int, height: int) -> bytes:
    """A grey PNG of any size, written row by row (a 10000x10000 one is ~100 KB and never in memory whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then black pixels
    block = row * 1000
    idat = b"".join([z.compress(block) for _ in range(height // 1000)] + [z.compress(row * (height % 1000)),
                                                                          z.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


class Client:
    """This process's side: a node, an executor, /diagnostics by status name."""

    def __init__(self, ctx, name="client"):
        self.node = Node(name, context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.diags = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 50)

    def diag(self, name_end=""):
        for msg in reversed(self.diags):
            for status in msg.status:
                if status.name.startswith("ar_ros") and status.name.endswith(name_end):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    def wait_diag(self, predicate, name_end="", timeout=10.0) -> dict:
        spin_until(self.ex, lambda: predicate(self.diag(name_end)), timeout)
        return self.diag(name_end)

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()


def _wait_node(client, proc, log, topic):
    assert spin_until(client.ex, lambda: client.node.count_publishers(topic) > 0 or proc.poll() is not None, 40.0)
    assert proc.poll() is None, read_log(log)


def test_bursts_of_service_calls_are_all_answered_and_shutdown_mid_pass_is_quiet(
        ros_context, tmp_path, small_checkpoint):
    proc, log = start_node(tmp_path, small_checkpoint, FAST_DIAG)
    c = Client(ros_context)
    deep = QoSProfile(depth=1000)  # the client's own queue must hold the answers too
    img_pub = c.node.create_publisher(Image, "image", 10)
    det_pub = c.node.create_publisher(Detection2DArray, "detections", 10)
    got = []
    c.node.create_subscription(Detection2DArray, "refined/detections", got.append, 10)
    try:
        _wait_node(c, proc, log, "/refined/detections")
        assert spin_until(c.ex, lambda: img_pub.get_subscription_count() > 0)
        img_pub.publish(image_msg(frame(), 1))
        assert c.wait_diag(lambda d: int(d.get("images_received", 0)) >= 1).get("images_received") == "1"

        set_target = c.node.create_client(SetTarget, "set_target", qos_profile=deep)
        enable = c.node.create_client(SetBool, "enable", qos_profile=deep)
        assert set_target.wait_for_service(timeout_sec=20.0) and enable.wait_for_service(timeout_sec=20.0)
        # 200 set_target calls at once (distinct ids: max_targets = 4 of them succeed), then 50 enable calls
        for cli, requests, successes in (
                (set_target, [SetTarget.Request(target_ids=[f"x{i}"], boxes=[bbox(BOX)]) for i in range(200)], 4),
                (enable, [SetBool.Request(data=bool(i % 2)) for i in range(49)] + [SetBool.Request(data=True)], 50)):
            futures = [cli.call_async(r) for r in requests]
            spin_until(c.ex, lambda: all(f.done() for f in futures), 60.0)
            answered = [f.result() for f in futures if f.done()]
            assert len(answered) == len(requests), f"{len(answered)} of {len(requests)} answered\n{read_log(log)}"
            assert sum(r.success for r in answered) == successes, {r.message for r in answered}

        # the worker busy with every frame; SIGINT lands while it refines and publishes
        sec, end = 2, time.monotonic() + 30.0
        while time.monotonic() < end and not (sec > 10 and got):
            img_pub.publish(image_msg(frame(), sec))
            det_pub.publish(detections_msg([(f"x{k}", (20.0 + 30 * k, 40.0, 60.0, 50.0)) for k in range(4)], sec))
            spin_until(c.ex, lambda: False, 0.03)
            sec += 1
        assert got, read_log(log)
    finally:
        rc = stop(proc)
        c.close()
    text = read_log(log)
    assert rc == 0 and "refinement failed" not in text and "context is invalid" not in text, text


def test_one_message_of_1000_id_less_boxes_tiny_frames_and_garbage_detections(ros_context, tmp_path,
                                                                            small_checkpoint):
    proc, log = start_node(tmp_path, small_checkpoint, FAST_DIAG)  # max_targets: 4
    c = Client(ros_context)
    img_pub = c.node.create_publisher(Image, "image", 10)
    det_pub = c.node.create_publisher(Detection2DArray, "detections", 10)
    got, targets = [], []
    c.node.create_subscription(Detection2DArray, "refined/detections", got.append, 10)
    c.node.create_subscription(RefinedTargetArray, "refined/targets", targets.append, 10)
    rng = np.random.default_rng(3)

    def send(sec, img, boxes, encoding="rgb8"):
        img_pub.publish(image_msg(img, sec, encoding=encoding))
        spin_until(c.ex, lambda: False, 0.15)
        det_pub.publish(detections_msg(boxes, sec))

    def out(sec, timeout=30.0):
        spin_until(c.ex, lambda: any(m.header.stamp.sec == sec for m in targets)
                   and any(m.header.stamp.sec == sec for m in got), timeout)
        return next((m for m in targets if m.header.stamp.sec == sec), None)

    try:
        _wait_node(c, proc, log, "/refined/detections")
        assert spin_until(c.ex, lambda: img_pub.get_subscription_count() and det_pub.get_subscription_count()
                          and c.node.count_subscribers("/refined/targets") and c.diag())
        for sec in (1, 2):  # warm: the memory a normal frame needs
            send(sec, frame(), [("", BOX)])
            assert out(sec) is not None, read_log(log)
        before = c.wait_diag(lambda d: int(d.get("frames_refined", 0)) >= 2)
        rss0 = rss_mb(proc.pid)

        boxes = [("", (float(x), float(y), 40.0, 30.0)) for x, y in zip(rng.uniform(0, 270, 1000),
                                                                          rng.uniform(0, 200, 1000))]
        t0 = time.monotonic()
        send(3, frame(), boxes)
        msg = out(3)
        took = time.monotonic() - t0
        assert msg is not None, read_log(log)
        after = c.wait_diag(lambda d: int(d.get("frames_refined", 0)) >= 3)
        grew = rss_mb(proc.pid) - rss0
        passes = int(after["passes"]) - int(before["passes"])
        figures = f"{took:.1f} s, RSS +{grew:.0f} MB, {passes} search passes, {msg.refine_ms:.0f} ms refining"
        # every input comes out (same ids, in order), at most max_targets refined, the rest flagged
        assert len(msg.targets) == 1000 and all(t.id == "" for t in msg.targets), figures
        assert [round(t.base_box.center.position.x - t.base_box.size_x / 2, 3) for t in msg.targets] == \
            [round(b[0], 3) for _, b in boxes]
        capped = [t for t in msg.targets if "max_targets" in t.reason]
        assert len(capped) >= 996 and all(t.fallback for t in capped), figures
        assert passes <= 1 and int(after["over_max_targets"]) >= 996, (figures, before, after)
        det = next(m for m in got if m.header.stamp.sec == 3)
        assert len(det.detections) == 1000
        assert took < 10.0 and grew < 60.0, figures

        # frames too small to refine are refused on arrival and counted; the next good frame is refined
        for n, (sec, (w, h)) in enumerate(zip((4, 5, 6), ((1, 1), (1, 640), (480, 1))), 1):
            send(sec, np.zeros((h, w, 3), np.uint8), [("a", (0.0, 0.0, 1.0, 1.0))])
            # one at a time: images ride a depth-1 queue, where a frame not yet taken is replaced by the next
            d = c.wait_diag(lambda d: int(d.get("bad_images", 0)) >= n)
        assert d["bad_images"] == "3" and d["errors"] == "0", d
        send(7, frame(), [("a", BOX)])
        assert out(7) is not None

        # bytes that are not a Detection2DArray: dropped and counted, nothing else changes
        for junk in (b"\x00\x01\x00\x00\x05", b"\x00\x01\x00\x00" + b"\xff" * 40):
            det_pub.publish(junk)
        d = c.wait_diag(lambda d: int(d.get("bad_detections", 0)) >= 2)
        assert d.get("bad_detections") == "2" and d["errors"] == "0", d
        send(8, frame(), [("a", BOX)])
        assert out(8) is not None and proc.poll() is None
    finally:
        rc = stop(proc)
        c.close()
    text = read_log(log)
    assert rc == 0 and "refinement failed" not in text, text


def test_a_camera_sending_tiny_or_huge_frames_costs_the_other_camera_nothing(ros_context, tmp_path,
                                                                           small_checkpoint):
    proc, log = start_node(tmp_path, small_checkpoint, FAST_DIAG + "    cameras: [front, rear]\n"
                                                                   "    image_transport: compressed\n")
    c = Client(ros_context)
    pubs = {cam: (c.node.create_publisher(CompressedImage, f"/{cam}/image/compressed", 10),
                  c.node.create_publisher(Detection2DArray, f"/{cam}/detections", 10)) for cam in ("front", "rear")}
    got = {"front": [], "rear": []}
    for cam in got:
        c.node.create_subscription(Detection2DArray, f"/{cam}/refined/detections", got[cam].append, 50)
    jpg = cv2.imencode(".jpg", frame()[..., ::-1])[1].tobytes()
    tiny, huge = png(1, 1), png(10000, 10000)
    assert len(huge) < 200_000

    def compressed(data, fmt, sec):
        msg = CompressedImage(format=fmt, data=data)
        msg.header.stamp = stamp(sec)
        return msg

    try:
        _wait_node(c, proc, log, "/rear/refined/detections")
        assert spin_until(c.ex, lambda: all(p.get_subscription_count() for pair in pubs.values() for p in pair))
        pubs["rear"][0].publish(compressed(jpg, "bgr8; jpeg compressed bgr8", 1))
        pubs["rear"][1].publish(detections_msg([("r", BOX)], 1))
        assert spin_until(c.ex, lambda: got["rear"], 30.0), read_log(log)
        rss0 = rss_mb(proc.pid)
        frames = 20
        for sec in range(2, 2 + frames):
            pubs["front"][0].publish(compressed(huge if sec == 5 else tiny, "png", sec))
            pubs["rear"][0].publish(compressed(jpg, "bgr8; jpeg compressed bgr8", sec))
            spin_until(c.ex, lambda: False, 0.05)
            pubs["front"][1].publish(detections_msg([("f", (0.0, 0.0, 1.0, 1.0))], sec))
            pubs["rear"][1].publish(detections_msg([("r", BOX)], sec))
            spin_until(c.ex, lambda: False, 0.1)
        spin_until(c.ex, lambda: len({m.header.stamp.sec for m in got["rear"]}) > frames, 10.0)
        # images ride a depth-1 queue: a frame the node has not taken yet is replaced by the next one, so
        # count against what arrived; every front frame that arrived must have been refused
        front = c.wait_diag(lambda d: int(d.get("images_received", 0)) >= frames * 3 // 4
                            and d.get("bad_images") == d.get("images_received"), "/front")
        rear = c.diag("/rear")
        rear_refined = {m.header.stamp.sec for m in got["rear"]} - {1}
        assert len(rear_refined) + int(rear.get("skipped_stale", 0)) >= frames - 1, (rear_refined, rear)
        assert len(rear_refined) >= frames * 3 // 4, (rear_refined, rear, read_log(log))
        assert front["bad_images"] == front["images_received"] and not got["front"], front
        assert frames * 3 // 4 <= int(front["bad_images"]) <= frames, front
        assert front["errors"] == "0" and rear["errors"] == "0"
        grew = rss_mb(proc.pid) - rss0
        assert grew < 100.0, f"RSS +{grew:.0f} MB after a 10000x10000 PNG"
    finally:
        rc = stop(proc)
        c.close()
    text = read_log(log)
    assert rc == 0 and "refinement failed" not in text, text
