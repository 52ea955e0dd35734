"""The refiner node in-process: real rclpy messages, services and parameters (no mocks)."""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")
pytest.importorskip("ar_ros.srv")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from ar_ros.msg import RefinedTargetArray  # noqa: E402
from ar_ros.ros.node import RefinerNode  # noqa: E402
from ar_ros.srv import ClearTargets, SetTarget  # noqa: E402
from ros_helpers import bbox, detections_msg, image_msg, spin_until, stamp  # noqa: E402

pytestmark = pytest.mark.ros
BOX = (200.0, 150.0, 120.0, 90.0)


class Harness:
    def __init__(self, ctx, checkpoint, **overrides):
        params = [Parameter("checkpoint", value=checkpoint), Parameter("device", value="cpu"),
                  Parameter("cpu_graphs", value=False)]  # a graph per batch size takes ~1 s at configure
        params += [Parameter(k, value=v) for k, v in overrides.items()]
        self.node = RefinerNode(context=ctx, parameter_overrides=params)
        self.node.trigger_configure()
        self.node.trigger_activate()
        self.tester = Node("tester", context=ctx)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.tester)
        self.got = {"det": [], "targets": [], "mask": [], "overlay": [], "label": []}
        t = self.tester
        t.create_subscription(Detection2DArray, "refined/detections", self.got["det"].append, 10)
        t.create_subscription(RefinedTargetArray, "refined/targets", self.got["targets"].append, 10)
        self.img_pub = t.create_publisher(Image, "image", 10)
        self.det_pub = t.create_publisher(Detection2DArray, "detections", 10)
        assert spin_until(self.ex, lambda: self.img_pub.get_subscription_count() > 0
                          and self.det_pub.get_subscription_count() > 0
                          and self.node.camera.pubs["detections"].get_subscription_count() > 0)

    def subscribe_images(self):
        from rclpy.qos import DurabilityPolicy, QoSProfile
        t = self.tester
        t.create_subscription(Image, "refined/mask", self.got["mask"].append, 10)
        t.create_subscription(Image, "refined/overlay", self.got["overlay"].append, 10)
        t.create_subscription(LabelInfo, "refined/mask/label_info", self.got["label"].append,
                              QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        assert spin_until(self.ex, lambda: self.node.camera.pubs["mask"].get_subscription_count() > 0
                          and self.node.camera.pubs["overlay"].get_subscription_count() > 0)

    def send(self, frame, sec, boxes, encoding="rgb8", nanosec=0):
        self.img_pub.publish(image_msg(frame, sec, nanosec, encoding))
        spin_until(self.ex, lambda: len(self.node.camera.cache) > 0 and
                   any(s == sec * 1_000_000_000 + nanosec for s in self.node.camera.cache._items), 5.0)
        if boxes is not None:
            self.det_pub.publish(detections_msg(boxes, sec, nanosec))

    def call(self, srv_type, name, request):
        cli = self.tester.create_client(srv_type, name)
        assert cli.wait_for_service(timeout_sec=5.0)
        fut = cli.call_async(request)
        self.ex.spin_until_future_complete(fut, timeout_sec=20.0)
        assert fut.done()
        return fut.result()

    def close(self):
        self.ex.shutdown()
        self.tester.destroy_node()
        self.node.destroy_node()


@pytest.fixture
def harness(ros_context, small_checkpoint):
    h = Harness(ros_context, small_checkpoint)
    yield h
    h.close()


def test_detections_in_refined_detections_out_with_the_image_header(harness, frame):
    harness.send(frame, 100, [("a", BOX), ("b", (20.0, 30.0, 60.0, 50.0))])
    assert spin_until(harness.ex, lambda: harness.got["det"] and harness.got["targets"])
    out = harness.got["det"][0]
    assert (out.header.stamp.sec, out.header.frame_id) == (100, "cam")
    assert [d.id for d in out.detections] == ["a", "b"]
    for det in out.detections:
        assert det.header.stamp.sec == 100
        assert det.bbox.size_x > 0 and det.bbox.size_y > 0 and det.bbox.center.theta == 0.0
        assert det.results[0].hypothesis.class_id == "thing"  # base class kept, score = refiner confidence
        assert 0.0 <= det.results[0].hypothesis.score <= 1.0
    tgt = harness.got["targets"][0]
    assert [t.id for t in tgt.targets] == ["a", "b"] and tgt.refine_ms > 0
    assert tgt.targets[0].base_box.center.position.x == pytest.approx(BOX[0] + BOX[2] / 2)
    # the second frame of the same ids reuses the templates (no new targets)
    harness.send(frame, 101, [("a", BOX), ("b", (22.0, 30.0, 60.0, 50.0))])
    assert spin_until(harness.ex, lambda: len(harness.got["det"]) >= 2)
    assert sorted(harness.node.refiner.targets) == ["a", "b"]


def test_mask_label_info_and_overlay_when_subscribed(harness, frame):
    harness.subscribe_images()
    harness.send(frame, 5, [("a", BOX), ("b", (400.0, 300.0, 100.0, 80.0))])
    assert spin_until(harness.ex, lambda: harness.got["mask"] and harness.got["overlay"] and harness.got["label"])
    mask, overlay, label = harness.got["mask"][0], harness.got["overlay"][0], harness.got["label"][0]
    assert (mask.encoding, mask.width, mask.height, mask.header.stamp.sec) == ("mono8", 640, 480, 5)
    values = set(np.frombuffer(bytes(mask.data), np.uint8).tolist())
    assert values <= {0, 1, 2}
    assert (overlay.encoding, overlay.width, overlay.height) == ("bgr8", 640, 480)
    assert [(c.class_id, c.class_name) for c in label.class_map] == [(1, "a"), (2, "b")]


def test_mask_still_comes_when_some_boxes_pass_through_unrefined(harness, frame):
    harness.node.set_parameters([Parameter("max_targets", value=1)])
    harness.subscribe_images()
    harness.send(frame, 6, [("a", BOX), ("n", (float("nan"), 0.0, 5.0, 5.0)), ("", (400.0, 300.0, 100.0, 80.0))])
    assert spin_until(harness.ex, lambda: harness.got["mask"] and harness.got["label"])
    values = set(np.frombuffer(bytes(harness.got["mask"][0].data), np.uint8).tolist())
    assert values <= {0, 1}  # only "a" was refined; "n" (NaN) and the id-less one keep their box, no mask
    assert [c.class_name for c in harness.got["label"][0].class_map] == ["a", "n", ""]


def test_set_target_clear_and_enable_round_trips(ros_context, small_checkpoint, frame):
    h = Harness(ros_context, small_checkpoint, mode="track", max_targets=2)
    try:
        req = SetTarget.Request(target_ids=["x"], boxes=[bbox(BOX)])
        res = h.call(SetTarget, "set_target", req)
        assert not res.success and "no image" in res.message
        h.send(frame, 7, None)
        res = h.call(SetTarget, "set_target", req)
        assert res.success, res.message
        assert list(res.target_ids) == ["x"] and len(res.refined_boxes) == 1
        assert res.refined_boxes[0].size_x > 0
        # unknown stamp, bad boxes, too many targets
        bad_stamp = SetTarget.Request(target_ids=["y"], boxes=[bbox(BOX)])
        bad_stamp.header.stamp = stamp(999)
        res = h.call(SetTarget, "set_target", bad_stamp)
        assert not res.success and "no cached image near stamp 999" in res.message
        for box, words in [((float("nan"), 0.0, 10.0, 10.0), "NaN"), ((0.0, 0.0, 0.0, 10.0), "zero"),
                           ((5000.0, 10.0, 20.0, 20.0), "outside")]:
            res = h.call(SetTarget, "set_target", SetTarget.Request(target_ids=["y"], boxes=[bbox(box)]))
            assert not res.success and words in res.message
        res = h.call(SetTarget, "set_target", SetTarget.Request(target_ids=["", ""], boxes=[bbox(BOX)] * 2))
        assert not res.success and "max_targets" in res.message
        res = h.call(SetTarget, "set_target", SetTarget.Request(target_ids=[], boxes=[bbox((10.0, 10.0, 50.0, 50.0))]))
        assert res.success and sorted(res.target_ids) == ["t1", "x"]
        # track mode, base tracker silent on these targets: each is refined from its previous box
        h.send(frame, 8, [])
        assert spin_until(h.ex, lambda: any(m.header.stamp.sec == 8 for m in h.got["det"]))
        msg = next(m for m in h.got["det"] if m.header.stamp.sec == 8)
        assert sorted(d.id for d in msg.detections) == ["t1", "x"]
        res = h.call(ClearTargets, "clear_targets", ClearTargets.Request(target_ids=["x", "nope"]))
        assert not res.success and "nope" in res.message and list(res.target_ids) == ["t1"]
        res = h.call(ClearTargets, "clear_targets", ClearTargets.Request())
        assert res.success and list(res.target_ids) == []
        res = h.call(SetBool, "enable", SetBool.Request(data=False))
        assert res.success and not h.node.enabled
    finally:
        h.close()


def test_disabled_node_skips_detections(harness, frame):
    harness.call(SetBool, "enable", SetBool.Request(data=False))
    harness.send(frame, 3, [("a", BOX)])
    spin_until(harness.ex, lambda: harness.node.camera.counters.get("disabled_skips") > 0, 5.0)
    assert harness.node.camera.counters.get("disabled_skips") == 1 and not harness.got["det"]
    harness.call(SetBool, "enable", SetBool.Request(data=True))
    harness.send(frame, 4, [("a", BOX)])
    assert spin_until(harness.ex, lambda: harness.got["det"])


def test_parameter_validation_rejects_bad_values(harness):
    node = harness.node
    results = node.set_parameters([Parameter("mask_mode", value="rainbow")])
    assert not results[0].successful and "label" in results[0].reason
    results = node.set_parameters([Parameter("min_score", value=2.0)])
    assert not results[0].successful
    results = node.set_parameters([Parameter("device", value="cuda")])
    assert not results[0].successful  # read-only
    results = node.set_parameters([Parameter("max_targets", value=0)])
    assert not results[0].successful
    results = node.set_parameters([Parameter("min_score", value=0.4)])
    assert results[0].successful and node.refiner.min_score == pytest.approx(0.4)
    assert not node.set_parameters([Parameter("keep_iou", value=1.5)])[0].successful
    assert node.set_parameters([Parameter("keep_iou", value=0.85)])[0].successful
    assert node.refiner.keep_iou == pytest.approx(0.85)
    assert not node.set_parameters([Parameter("box_mode", value="mask")])[0].successful
    assert node.set_parameters([Parameter("box_mode", value="fused")])[0].successful
    assert node.refiner.box_mode == "fused"


def test_bad_input_is_logged_counted_and_survived(harness, frame):
    node = harness.node
    # unsupported encoding, then a step that lies about the row size: refused on arrival (headers only)
    bad = image_msg(frame, 10)
    bad.encoding = "32FC3"
    harness.img_pub.publish(bad)
    assert spin_until(harness.ex, lambda: node.camera.counters.get("bad_images") == 1)
    short = image_msg(frame, 11)
    short.step = 10
    harness.img_pub.publish(short)
    assert spin_until(harness.ex, lambda: node.camera.counters.get("bad_images") == 2)
    # bytes that are not a serialised Image at all (published raw): dropped and counted
    harness.img_pub.publish(b"\x00\x01\x00\x00\x05")
    assert spin_until(harness.ex, lambda: node.camera.counters.get("bad_images") == 3)
    assert len(node.camera.cache) == 0  # none of them is cached, so none can be paired or set as a target
    # empty detections, NaN and outside boxes, stale stamps
    harness.send(frame, 12, [])
    assert spin_until(harness.ex, lambda: any(m.header.stamp.sec == 12 for m in harness.got["det"]))
    assert not next(m for m in harness.got["det"] if m.header.stamp.sec == 12).detections
    harness.send(frame, 13, [("n", (float("nan"), 1.0, 5.0, 5.0)), ("o", (9000.0, 0.0, 5.0, 5.0)), ("a", BOX)])
    assert spin_until(harness.ex, lambda: any(m.header.stamp.sec == 13 for m in harness.got["det"]))
    out13 = next(m for m in harness.got["det"] if m.header.stamp.sec == 13)
    assert [d.id for d in out13.detections] == ["n", "o", "a"]  # the same ids; invalid boxes passed through
    assert out13.detections[1].bbox.center.position.x == pytest.approx(9002.5)
    assert out13.detections[1].results[0].hypothesis.score == 0.0
    assert node.camera.counters.get("invalid_box") == 2
    harness.det_pub.publish(detections_msg([("a", BOX)], 1))  # 12 s older than the newest image
    assert spin_until(harness.ex, lambda: node.camera.counters.get("stale") >= 1)
    # a 4K frame still works
    big = np.zeros((2160, 3840, 3), np.uint8)
    big[1000:1200, 2000:2300] = 200
    harness.send(big, 14, [("a", (2000.0, 1000.0, 300.0, 200.0))], encoding="bgr8")
    assert spin_until(harness.ex, lambda: any(m.header.stamp.sec == 14 for m in harness.got["det"]), 20.0)
    assert node.camera.counters.get("errors") == 0


def test_nearest_stamp_within_slop_pairs_and_late_detections_still_match(harness, frame):
    for i in range(5):
        harness.send(frame, 20 + i, None)
    # detections for an older frame (a slow base tracker) pair with that frame, not the newest
    harness.det_pub.publish(detections_msg([("a", BOX)], 21))
    assert spin_until(harness.ex, lambda: harness.got["det"])
    assert harness.got["det"][-1].header.stamp.sec == 21
    # 20 ms off the frame stamp: within the 50 ms slop
    harness.det_pub.publish(detections_msg([("a", BOX)], 22, 20_000_000))
    assert spin_until(harness.ex, lambda: len(harness.got["det"]) >= 2)
    assert harness.got["det"][-1].header.stamp.sec == 22 and harness.got["det"][-1].header.stamp.nanosec == 0


def test_compressed_image_transport(ros_context, small_checkpoint, frame):
    import cv2
    from sensor_msgs.msg import CompressedImage
    h = Harness.__new__(Harness)
    params = [Parameter("checkpoint", value=small_checkpoint), Parameter("device", value="cpu"),
              Parameter("image_transport", value="compressed"), Parameter("cpu_graphs", value=False)]
    h.node = RefinerNode(context=ros_context, parameter_overrides=params)
    h.node.trigger_configure()
    h.node.trigger_activate()
    h.tester = Node("tester", context=ros_context)
    h.ex = SingleThreadedExecutor(context=ros_context)
    h.ex.add_node(h.node)
    h.ex.add_node(h.tester)
    got = []
    h.tester.create_subscription(Detection2DArray, "refined/detections", got.append, 10)
    pub = h.tester.create_publisher(CompressedImage, "image/compressed", 10)
    det_pub = h.tester.create_publisher(Detection2DArray, "detections", 10)
    try:
        assert spin_until(h.ex, lambda: pub.get_subscription_count() > 0 and det_pub.get_subscription_count() > 0)
        ok, jpg = cv2.imencode(".jpg", frame[..., ::-1])
        msg = CompressedImage(format="bgr8; jpeg compressed bgr8", data=jpg.tobytes())
        msg.header.stamp = stamp(9)
        pub.publish(msg)
        assert spin_until(h.ex, lambda: len(h.node.camera.cache) == 1)
        det_pub.publish(detections_msg([("a", BOX)], 9))
        assert spin_until(h.ex, lambda: got)
        bad = CompressedImage(format="jpeg", data=jpg.tobytes()[:100])  # cut before its frame header
        bad.header.stamp = stamp(10)
        pub.publish(bad)
        assert spin_until(h.ex, lambda: h.node.camera.counters.get("bad_images") == 1)
        assert len(h.node.camera.cache) == 1  # refused on arrival, not cached
    finally:
        h.close()


def test_configure_builds_a_cpu_graph_per_batch_size_up_to_max_targets(ros_context, small_checkpoint):
    from ar_ros.backends.torch_cpu.graphs import graphs_available
    node = RefinerNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=small_checkpoint), Parameter("device", value="cpu"),
        Parameter("max_targets", value=2), Parameter("box_mode", value="corner")])
    try:
        node.trigger_configure()
        graphs = node.refiner.graphs
        if not graphs_available():
            assert graphs is None
            return
        assert sorted(key[0][0] for key in graphs.graphs) == [1, 2], graphs.failure  # before any frame
    finally:
        node.destroy_node()
