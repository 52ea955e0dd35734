"""Which frame detections are refined on, seen from another process: the installed node in its own
process, cameras, base trackers and clients in others, real messages (issue 15: wrong frame at 30 Hz,
a future-stamped frame, invalid and absurd boxes, track mode disabled or with a killed base tracker)."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")
pytest.importorskip("ar_ros.srv")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from ar_ros.msg import RefinedTargetArray  # noqa: E402
from ar_ros.srv import SetTarget  # noqa: E402
from ros_helpers import bbox, detections_msg, image_msg, spin_until  # noqa: E402
from test_node_process import HERE, latest_diagnostics, node_executable, read_log, start_node, stop  # noqa: E402

pytestmark = pytest.mark.ros
BOX = (200.0, 150.0, 120.0, 90.0)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


class Client:
    """Camera, base tracker and listener of one node under test, in this process, on topics ``/<ns>/...``."""

    def __init__(self, ctx, ns: str):
        self.ns = ns
        self.node = Node(f"client_{ns}", context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.out, self.targets, self.diags = [], [], []
        n = self.node
        n.create_subscription(Detection2DArray, f"/{ns}/refined/detections", self.out.append, 100)
        n.create_subscription(RefinedTargetArray, f"/{ns}/refined/targets", self.targets.append, 100)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.image_pub = n.create_publisher(Image, f"/{ns}/image",
                                            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.det_pub = None  # created on first use: in track mode this client is no base tracker

    def wait_for_node(self, log) -> None:
        assert spin_until(self.ex, lambda: self.image_pub.get_subscription_count() > 0
                          and self.node.count_publishers(f"/{self.ns}/refined/detections") > 0, 40.0), read_log(log)

    def send(self, frame, ns: int, boxes=None, period: float = 0.05) -> None:
        """When ``boxes`` are given, detections stamped ``ns`` (class_id = the stamp); then the image stamped
        ``ns`` (after its detections: the harder case); then spin ``period``."""
        sec, nsec = divmod(ns, 10**9)
        if boxes is not None and self.det_pub is None:
            self.det_pub = self.node.create_publisher(Detection2DArray, f"/{self.ns}/detections", 10)
            assert spin_until(self.ex, lambda: self.det_pub.get_subscription_count() > 0)
        if boxes is not None:
            self.det_pub.publish(detections_msg(boxes, sec, nsec, class_id=f"{sec}.{nsec:09d}"))
        self.image_pub.publish(image_msg(frame, sec, nsec))
        spin_until(self.ex, lambda: False, period)

    def call(self, srv_type, name, request):
        cli = self.node.create_client(srv_type, f"/{self.ns}/{name}")
        assert cli.wait_for_service(timeout_sec=20.0)
        fut = cli.call_async(request)
        self.ex.spin_until_future_complete(fut, timeout_sec=20.0)
        assert fut.done(), name
        return fut.result()

    def refined_at(self, stamps) -> list:
        wanted = set(stamps)
        return [m for m in self.out if stamp_ns(m) in wanted]

    def diagnostics(self, ready=lambda diag: True) -> dict:
        """The node's newest /diagnostics values, waiting (a few periods at most) until ``ready`` holds."""
        diag = {}
        spin_until(self.ex, lambda: diag.update(latest_diagnostics(self.diags)) or (bool(diag) and ready(diag)), 5.0)
        return diag

    def close(self) -> None:
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture
def node_under_test(ros_context, tmp_path, small_checkpoint):
    """``start(ns, **params)`` -> (client, log); the node is stopped and must exit cleanly."""
    started = []

    def start(ns, **params):
        proc, log = start_node(tmp_path, small_checkpoint, remaps=[f"__ns:=/{ns}"], **params)
        client = Client(ros_context, ns)
        started.append((proc, log, client))
        client.wait_for_node(log)
        return client, log

    yield start
    for proc, log, client in started:
        rc = stop(proc)
        client.close()
        assert rc == 0, read_log(log)


@pytest.fixture(scope="module")
def refine_node(tmp_path_factory, small_checkpoint):
    """One refine-mode node for the two tests below (each with stamps of its own): start-up is most of
    their time. sync_wait 0.3 s: margin on a loaded CI machine (the default is 0.1 s)."""
    proc, log = start_node(tmp_path_factory.mktemp("refine_node"), small_checkpoint, remaps=["__ns:=/sync"],
                           sync_slop=0.05, sync_wait=0.3)
    yield log
    rc = stop(proc)
    assert rc == 0, read_log(log)


@pytest.fixture
def sync_client(ros_context, refine_node):
    client = Client(ros_context, "sync")
    client.wait_for_node(refine_node)
    yield client, refine_node
    client.close()


def test_detections_at_30hz_pair_with_their_own_frame(sync_client):
    """Each frame's detections are published by another process right after it (as ros2 bag play does)
    or, every other frame, right before it (a base tracker on a faster path); 30 Hz, 640x480, sync_slop
    50 ms (> the 33 ms frame period): they are refined on their own frame, and no frame goes out twice."""
    client, log = sync_client
    cam = subprocess.Popen([sys.executable, str(HERE / "camera_publisher.py"), "--frames", "60", "--rate", "30",
                            "--stamp-step", str(1 / 30), "--order", "alternate",
                            "--ros-args", "-r", "image:=/sync/image", "-r", "detections:=/sync/detections"],
                           cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 60
        while cam.poll() is None and time.monotonic() < end:
            client.ex.spin_once(timeout_sec=0.05)
        out = cam.communicate(timeout=10)[0]
        assert "sent 60" in out, out
        spin_until(client.ex, lambda: False, 0.5)
    finally:
        if cam.poll() is None:
            cam.kill()
    refined = [m for m in client.out if m.detections]
    # the class_id carries the stamp of the detections, the header the stamp of the image refined
    own = [m for m in refined if m.detections[0].results[0].hypothesis.class_id ==
           f"{m.header.stamp.sec}.{m.header.stamp.nanosec:09d}"]
    diag = client.diagnostics(lambda d: int(d["frames_refined"]) >= len(refined))
    odd = [m for m in own if round((stamp_ns(m) - 1000 * 10**9) * 30 / 1e9) % 2]  # detections first
    report = f"{len(own)}/{len(refined)} on their own frame ({len(odd)} detections-first)\n{diag}\n{read_log(log)}"
    print(f"{len(own)}/{len(refined)} refined on their own frame ({len(odd)} of them detections-first); " +
          ", ".join(f"{k}={diag.get(k)}" for k in ("paired_exact", "paired_waited", "paired_nearest", "unmatched")))
    # not all 60: frames that arrive in a burst (a loaded machine) are skipped on purpose, and counted
    # (skipped_stale; a clean-clone CI run with the other test worker busy refined 15 and skipped 35)
    assert len(refined) >= 10 and len(odd) >= 3, report
    assert len(own) >= 0.99 * len(refined), report
    assert len({stamp_ns(m) for m in refined}) == len(refined), "an image stamp was published twice\n" + report
    paired = sum(int(diag[k]) for k in ("paired_exact", "paired_waited", "paired_nearest"))
    assert paired >= len(refined) and int(diag["paired_nearest"]) <= 0.01 * paired, report
    # every received detection was paired (or counted), skipped or not: the pairing, not the load, is tested
    assert paired >= 0.9 * int(diag["detections_received"]), report


def test_future_stamped_frames_invalid_and_absurd_boxes(sync_client, frame):
    """A frame stamped an hour (and 2^31-1 s) ahead does not stop pairing nor becomes "latest"; invalid
    boxes keep their id as flagged fallbacks; a finite but absurd box is neither refined nor a target."""
    client, log = sync_client
    before = client.diagnostics()  # counters are the node's since start (the test above may have run)

    def count(diag, *keys):
        return sum(int(diag[k]) - int(before[k]) for k in keys)

    base = 100 * 10**9
    normal = [base + k * 100_000_000 for k in range(30)]  # 10 Hz: the previous frame is beyond sync_slop
    for ns in normal[:5]:
        client.send(frame, ns, [("a", BOX)])
    client.send(frame, base + 3600 * 10**9)              # a clock jump, or a bad driver
    client.send(frame, (2**31 - 1) * 10**9)
    for ns in normal[5:25]:  # 0.15 s apart: under load a pass can take 0.3 s, and newer pairs replace older
        client.send(frame, ns, [("a", BOX)], period=0.15)
    spin_until(client.ex, lambda: len(client.refined_at(normal[5:25])) >= 20, 5.0)
    after = client.refined_at(normal[5:25])
    diag = client.diagnostics(lambda d: count(d, "paired_exact", "paired_waited") >= 25)
    # paired, none stale (was: all 20 after the jump stale); some outputs skipped on purpose when frames
    # arrive in a burst (load), an image lost in transport leaves its detections unmatched, and on a busy
    # machine a newer message can replace one the node had not taken yet (depth-limited queues): so the
    # detections that arrived are what must be paired
    paired, received = count(diag, "paired_exact", "paired_waited"), count(diag, "detections_received")
    assert len(after) >= 5 and count(diag, "stale") == 0 and received >= 15 and paired >= received - 2, \
        f"{len(after)}/20 frames after the jump refined, {paired}/{received} detections paired\n{diag}\n{read_log(log)}"
    assert all(m.detections[0].results[0].hypothesis.class_id ==
               f"{m.header.stamp.sec}.{m.header.stamp.nanosec:09d}" for m in after)
    # "latest" (zero stamp) is the frame received last, not the one with the largest stamp
    res = client.call(SetTarget, "set_target", SetTarget.Request(target_ids=["z"], boxes=[bbox(BOX)]))
    assert res.success and f"stamped {normal[24] / 1e9:.3f}" in res.message, res.message
    res = client.call(SetTarget, "set_target",
                      SetTarget.Request(target_ids=["huge"], boxes=[bbox((0.0, 0.0, 2e300, 50.0))]))
    assert not res.success and "times the" in res.message, res.message
    # invalid boxes: the same ids out, the base box unchanged, score 0, flagged with the reason
    boxes = [("ok", BOX), ("nan", (float("nan"), 1.0, 5.0, 5.0)), ("huge", (0.0, 0.0, 2e300, 50.0)),
             ("out", (9000.0, 0.0, 5.0, 5.0))]
    client.send(frame, normal[25], boxes)
    assert spin_until(client.ex, lambda: client.refined_at([normal[25]]) and
                      any(stamp_ns(t) == normal[25] for t in client.targets), 10.0), read_log(log)
    det = client.refined_at([normal[25]])[0]
    assert [d.id for d in det.detections] == ["ok", "nan", "huge", "out"]
    huge = det.detections[2]
    assert huge.bbox.size_x == 2e300 and huge.results[0].hypothesis.score == 0.0  # not "refined" to 2.2e300
    targets = next(t for t in client.targets if stamp_ns(t) == normal[25]).targets
    assert [t.id for t in targets] == ["ok", "nan", "huge", "out"] and all(t.fallback for t in targets[1:])
    assert "NaN" in targets[1].reason and "times the" in targets[2].reason and "outside" in targets[3].reason
    diag = client.diagnostics(lambda d: count(d, "invalid_box") >= 3)
    assert count(diag, "invalid_box") == 3, diag


def test_track_mode_disabled_and_with_a_killed_base_tracker(node_under_test, frame):
    """Track mode: enable(false) stops refinement; a base tracker killed with SIGKILL (its DDS publisher
    lingers for ~20 s) does not stop the output: frames are refined from the previous boxes."""
    client, log = node_under_test("trk", mode="track")
    ns = iter(range(10**12, 10**13, 50_000_000))
    client.send(frame, next(ns))
    res = client.call(SetTarget, "set_target", SetTarget.Request(target_ids=["x"], boxes=[bbox(BOX)]))
    assert res.success, res.message

    def run(n):
        stamps = [next(ns) for _ in range(n)]
        for s in stamps:  # 0.1 s apart: on a loaded machine a pass (and the base tracker) can take that long
            client.send(frame, s, period=0.1)
        spin_until(client.ex, lambda: len(client.refined_at(stamps)) >= n, 1.5)
        return client.refined_at(stamps)

    assert len(run(10)) >= 3, read_log(log)                           # no base tracker at all
    assert client.call(SetBool, "enable", SetBool.Request(data=False)).success
    assert run(10) == [], "refined while disabled"
    assert client.call(SetBool, "enable", SetBool.Request(data=True)).success
    tracker = subprocess.Popen([str(Path(node_executable()).with_name("base_tracker")), "--ros-args",
                                "-r", "__ns:=/trk"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and client.node.count_publishers("/trk/detections") == 0:
            client.send(frame, next(ns))
        with_tracker = run(20)
        diag = client.diagnostics(lambda d: int(d["paired_exact"]) + int(d["paired_waited"]) > 0)
        assert len(with_tracker) >= 5 and int(diag["paired_exact"]) + int(diag["paired_waited"]) > 0, \
            f"{len(with_tracker)}/20 {diag}"
        tracker.send_signal(signal.SIGKILL)
        tracker.wait(timeout=10)
        after_kill = run(20)  # 2 s: detections_timeout (0.5 s) waiting for detections, then from the last box
        later = run(20)       # 2-4 s after the kill (before the fix: nothing for ~20 s)
    finally:
        if tracker.poll() is None:
            tracker.kill()
    assert len(after_kill) + len(later) >= 10 and len(later) >= 5, \
        f"{len(after_kill)}/20 + {len(later)}/20 refined after the kill\n{read_log(log)}"
    assert all([d.id for d in m.detections] == ["x"] for m in after_kill + later)
    assert int(client.diagnostics(lambda d: int(d["no_detections"]) >= 20)["no_detections"]) >= 20
