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
