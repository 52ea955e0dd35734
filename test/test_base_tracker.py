"""camera -> base_tracker -> ar_ros: the chain a user without a tracker of their own runs."""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from ar_ros.ros.base_tracker import BaseTrackerNode  # noqa: E402
from ar_ros.ros.node import RefinerNode  # noqa: E402
from ar_ros.srv import SetTarget  # noqa: E402
from ros_helpers import bbox, image_msg, spin_until  # noqa: E402

pytestmark = pytest.mark.ros


def test_chain_camera_base_tracker_refiner(ros_context, small_checkpoint):
    base = BaseTrackerNode(context=ros_context, parameter_overrides=[Parameter("tracker", value="kcf")])
    refiner = RefinerNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=small_checkpoint), Parameter("device", value="cpu")])
    refiner.trigger_configure()
    refiner.trigger_activate()
    cam = Node("camera", context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    for n in (base, refiner, cam):
        ex.add_node(n)
    got, base_out = [], []
    cam.create_subscription(Detection2DArray, "refined/detections", got.append, 10)
    cam.create_subscription(Detection2DArray, "detections", base_out.append, 10)
    pub = cam.create_publisher(Image, "image", 10)
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() >= 2)
        rng = np.random.default_rng(0)
        background = rng.integers(0, 60, (240, 320, 3), dtype=np.uint8)

        def frame(i):
            img = background.copy()
            img[100:150, 40 + 3 * i:100 + 3 * i] = (230, 200, 40)
            return img
        pub.publish(image_msg(frame(0), 1))
        assert spin_until(ex, lambda: base.last_rgb is not None)
        # both nodes serve set_target under the same name in this test: call the base tracker's directly
        res = base._srv_set_target(SetTarget.Request(boxes=[bbox((40.0, 100.0, 60.0, 50.0))]), SetTarget.Response())
        assert res.success and list(res.target_ids) == ["t1"]
        for i in range(1, 6):
            pub.publish(image_msg(frame(i), 1 + i))
            assert spin_until(ex, lambda: any(m.header.stamp.sec == 1 + i for m in got), 10.0)
        last = next(m for m in got if m.header.stamp.sec == 6)
        assert [d.id for d in last.detections] == ["t1"]
        assert base_out[-1].detections[0].bbox.center.position.x > 70  # the base tracker followed the motion
    finally:
        ex.shutdown()
        for n in (cam, refiner, base):
            n.destroy_node()


def test_bad_tracker_kind_is_refused(ros_context):
    with pytest.raises(ValueError, match="tracker must be one of"):
        BaseTrackerNode(context=ros_context, parameter_overrides=[Parameter("tracker", value="magic")])


def test_base_tracker_process_takes_refined_boxes_back_for_the_frame_it_tracked(ros_context, tmp_path):
    """Closed loop over real rclpy: a base_tracker process with use_feedback (trusted boxes only, from
    refined/targets), a client playing camera and refiner."""
    from ar_ros.io.detections import fill_bbox
    from ar_ros.msg import RefinedTarget, RefinedTargetArray
    import subprocess
    from ar_ros.io.detections import bbox_to_xywh
    from ar_ros.data.opencv_trackers import OpenCVTracker
    from ros_helpers import installed_executable
    from test_node_process import read_log, stop
    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (240, 320, 3), dtype=np.uint8)
    frames = []
    for i in range(3):
        img = background.copy()
        img[100:150, 40 + 3 * i:100 + 3 * i] = (230, 200, 40)
        img[110:140, 55 + 3 * i:85 + 3 * i] = (40, 90, 220)
        frames.append(img)
    init = (40.0, 100.0, 60.0, 50.0)
    log = open(tmp_path / "base_tracker.log", "w+")
    proc = subprocess.Popen([installed_executable("base_tracker"), "--ros-args", "-p", "tracker:=kcf",
                             "-p", "use_feedback:=true"], stdout=log, stderr=subprocess.STDOUT)
    client = Node("camera_and_refiner", context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(client)
    got = {}
    client.create_subscription(Detection2DArray, "detections",
                               lambda m: got.__setitem__(m.header.stamp.sec, bbox_to_xywh(m.detections[0].bbox))
                               if m.detections else None, 10)
    images = client.create_publisher(Image, "image", 10)
    refined = client.create_publisher(RefinedTargetArray, "refined/targets", 10)

    def targets_msg(box, sec, **flags):
        msg = RefinedTargetArray()
        msg.header.stamp.sec = sec
        item = RefinedTarget(id="a", **flags)
        fill_bbox(item.refined_box, box)
        msg.targets.append(item)
        return msg

    set_target = client.create_client(SetTarget, "set_target")
    try:
        assert spin_until(ex, lambda: images.get_subscription_count() >= 1 and refined.get_subscription_count() >= 1
                          and set_target.service_is_ready(), 30.0), read_log(log)
        res = None
        for _ in range(20):  # the first image may still be on its way when the service answers
            images.publish(image_msg(frames[0], 1))
            fut = set_target.call_async(SetTarget.Request(target_ids=["a"], boxes=[bbox(init)]))
            assert spin_until(ex, fut.done, 10.0)
            res = fut.result()
            if res.success:
                break
            spin_until(ex, lambda: False, 0.2)
        assert res.success, res.message
        images.publish(image_msg(frames[1], 2))
        assert spin_until(ex, lambda: 2 in got, 10.0), read_log(log)
        # the "refined" box of frame 1: the tracker's box moved 12 px right; then one for an older frame
        moved = (got[2][0] + 12.0, got[2][1], got[2][2], got[2][3])
        refined.publish(targets_msg((0.0, 0.0, 40.0, 40.0), 2, lost=True))  # untrusted: must be ignored
        refined.publish(targets_msg((0.0, 0.0, 40.0, 40.0), 2, kept=True))  # untrusted: must be ignored
        # the base box predicted right (reseed_below 0.5 by default): the tracker keeps its own state
        refined.publish(targets_msg((0.0, 0.0, 40.0, 40.0), 2, base_quality=0.9))
        refined.publish(targets_msg(moved, 2, base_quality=0.3))  # trusted, the base box predicted off
        refined.publish(targets_msg((0.0, 0.0, 40.0, 40.0), 1))  # stale: must be ignored
        spin_until(ex, lambda: False, 1.0)  # let both arrive before the next frame
        images.publish(image_msg(frames[2], 3))
        assert spin_until(ex, lambda: 3 in got, 10.0), read_log(log)
    finally:
        code = stop(proc)
        ex.shutdown()
        client.destroy_node()
    assert code == 0, read_log(log)
    # the same tracker here: open loop would give `plain`; re-seeded on frame 1 from `moved` it gives `closed`
    local, plain = OpenCVTracker("kcf"), OpenCVTracker("kcf")
    for tracker in (local, plain):
        tracker.init(frames[0], init)
        assert np.allclose(tracker.update(frames[1]), got[2], atol=0.01)
    assert local.reseed(frames[1], moved)
    closed, plain = local.update(frames[2]), plain.update(frames[2])
    assert np.allclose(got[3], closed, atol=0.01) and not np.allclose(got[3], plain, atol=3.0)
