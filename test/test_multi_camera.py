"""One node, several cameras, one model: per-camera topics and targets, cross-camera batching."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from ar_ros.ros.node import RefinerNode  # noqa: E402
from ar_ros.srv import SetTarget  # noqa: E402
from ros_helpers import bbox, detections_msg, image_msg, spin_until  # noqa: E402

pytestmark = pytest.mark.ros
CAMS = ["front", "left", "right"]
BOX = (200.0, 150.0, 120.0, 90.0)
HERE = Path(__file__).parent


@pytest.fixture
def multi(ros_context, small_checkpoint):
    node = RefinerNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value=small_checkpoint), Parameter("device", value="cpu"),
        Parameter("cameras", value=CAMS), Parameter("cpu_graphs", value=False)])
    node.trigger_configure()
    node.trigger_activate()
    tester = Node("tester", context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    ex.add_node(tester)
    got = {c: [] for c in CAMS}
    pubs = {}
    for cam in CAMS:
        tester.create_subscription(Detection2DArray, f"{cam}/refined/detections", got[cam].append, 10)
        pubs[cam] = (tester.create_publisher(Image, f"{cam}/image", 10),
                     tester.create_publisher(Detection2DArray, f"{cam}/detections", 10))
    assert spin_until(ex, lambda: all(p.get_subscription_count() for pair in pubs.values() for p in pair))
    yield node, tester, ex, got, pubs
    ex.shutdown()
    tester.destroy_node()
    node.destroy_node()


def test_one_pass_serves_several_cameras_and_outputs_keep_their_headers(multi, frame):
    node, tester, ex, got, pubs = multi
    with node.cond:  # hold the worker back until every camera has a pair waiting (RLock: callbacks still run)
        for k, cam in enumerate(CAMS):
            pubs[cam][0].publish(image_msg(frame, 10 + k, frame_id=f"{cam}_optical"))
            pubs[cam][1].publish(detections_msg([("a", BOX), (f"{cam}_only", (20.0, 30.0, 60.0, 50.0))], 10 + k,
                                                frame_id=f"{cam}_optical"))
        assert spin_until(ex, lambda: all(c.pending is not None for c in node.cameras))
        passes = node.refiner.passes
    assert spin_until(ex, lambda: all(got[c] for c in CAMS))
    assert node.refiner.passes == passes + 1 and node.refiner.last_batch_size == 6
    for k, cam in enumerate(CAMS):
        msg = got[cam][0]
        assert (msg.header.stamp.sec, msg.header.frame_id) == (10 + k, f"{cam}_optical")
        assert [d.id for d in msg.detections] == ["a", f"{cam}_only"]
    # the same id on three cameras is three targets, one copy of the weights
    assert sorted(node.refiner.targets) == sorted([(c, "a") for c in CAMS] + [(c, f"{c}_only") for c in CAMS])


def test_targets_set_on_one_camera_stay_there(multi, frame):
    node, tester, ex, got, pubs = multi
    pubs["left"][0].publish(image_msg(frame, 5))
    assert spin_until(ex, lambda: len(node.cameras[1].cache) == 1)
    cli = tester.create_client(SetTarget, "left/set_target")
    assert cli.wait_for_service(timeout_sec=5)
    fut = cli.call_async(SetTarget.Request(target_ids=["x"], boxes=[bbox(BOX)]))
    ex.spin_until_future_complete(fut, timeout_sec=20)
    assert fut.result().success and list(fut.result().target_ids) == ["x"]
    assert node.cameras[1].live_ids() == ["x"] and node.cameras[0].live_ids() == [] \
        and node.cameras[2].live_ids() == []


def test_total_max_targets_is_shared_round_robin(multi, frame):
    node, tester, ex, got, pubs = multi
    node.set_parameters([Parameter("max_targets", value=2)])
    with node.cond:
        for k, cam in enumerate(CAMS):
            pubs[cam][0].publish(image_msg(frame, 20 + k))
            pubs[cam][1].publish(detections_msg([("a", BOX)], 20 + k))
        assert spin_until(ex, lambda: all(c.pending is not None for c in node.cameras))
    assert spin_until(ex, lambda: all(got[c] for c in CAMS))
    assert node.refiner.last_batch_size == 2
    full = [c for c in node.cameras if c.counters.get("batch_full")]
    assert len(full) == 1  # one camera waited this pass, with its base box published and flagged


def test_a_camera_whose_frame_fails_costs_the_other_cameras_nothing(multi, frame):
    from rclpy.serialization import serialize_message
    from ar_ros.io.cdr import IMAGE_TYPE, raw_image
    from ar_ros.ros.camera import CachedImage
    from ar_ros.ros.pairing import Job
    node, tester, ex, got, pubs = multi

    def job(img, sec, boxes):  # straight to the worker, as if the arrival check had let it through
        return Job(CachedImage(raw_image(serialize_message(image_msg(img, sec)), IMAGE_TYPE), 0.0),
                   detections_msg(boxes, sec), 0.0)

    def one_pass(front_img, sec):
        with node.cond:  # all three pending together: one shared pass
            node.submit(node.cameras[0], job(front_img, sec, [("f", (0.0, 0.0, 1.0, 1.0))]))
            for cam in node.cameras[1:]:
                node.submit(cam, job(frame, sec, [("a", BOX)]))
        assert spin_until(ex, lambda: all(any(m.header.stamp.sec == sec for m in got[c]) for c in CAMS[1:]))

    # a frame too small to refine: that camera's frame is skipped and counted, the others are refined
    one_pass(np.zeros((1, 1, 3), np.uint8), 30)
    assert node.cameras[0].counters.get("bad_images") == 1 and not got["front"]
    # the shared pass fails on one camera's frame: each camera is then refined alone; that one keeps
    # its base boxes, flagged, and counts an error, the others are refined as usual
    real = node.refiner.refine_many

    def failing_on_small_frames(jobs, **kw):
        if any(j[0].shape[0] == 100 for j in jobs):
            raise RuntimeError("injected failure")
        return real(jobs, **kw)
    node.refiner.refine_many = failing_on_small_frames
    try:
        one_pass(frame[:100].copy(), 31)
    finally:
        node.refiner.refine_many = real
    assert spin_until(ex, lambda: got["front"])
    front = got["front"][-1]
    assert [d.id for d in front.detections] == ["f"] and front.detections[0].results[0].hypothesis.score == 0.0
    assert [c.counters.get("errors") for c in node.cameras] == [1, 0, 0]
    assert all([d.id for d in got[c][-1].detections] == ["a"] for c in CAMS[1:])


@pytest.mark.parametrize("names", [["front", "front"], ["front", ""], ["9lives"], ["has space"]])
def test_bad_camera_names_are_refused(ros_context, names):
    with pytest.raises(ValueError, match="cameras must"):
        RefinerNode(context=ros_context, parameter_overrides=[Parameter("cameras", value=names)])


@pytest.mark.slow
def test_three_camera_processes_and_a_stalled_one(ros_context, tmp_path, small_checkpoint):
    from test_node_process import node_executable, read_log, stop
    params = tmp_path / "p.yaml"
    params.write_text(f"""/**:
  ros__parameters:
    checkpoint: "{small_checkpoint}"
    device: cpu
    cpu_graphs: false
    cameras: [front, left, right]
""")
    log = open(tmp_path / "node.log", "w+")
    proc = subprocess.Popen([node_executable(), "--ros-args", "--params-file", str(params)], stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    listener = Node("listener", context=ros_context)
    got = {c: [] for c in CAMS}
    for cam in CAMS:
        listener.create_subscription(Detection2DArray, f"/{cam}/refined/detections", got[cam].append, 100)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(listener)
    cams = {}
    try:
        assert spin_until(ex, lambda: all(listener.count_publishers(f"/{c}/refined/detections") for c in CAMS),
                          30.0), read_log(log)
        frames = {"front": 40, "left": 40, "right": 8}  # right stalls (stops) early
        for k, cam in enumerate(CAMS):
            cams[cam] = subprocess.Popen(
                [sys.executable, str(HERE / "camera_publisher.py"), "--frames", str(frames[cam]), "--rate", "6",
                 "--width", "320", "--height", "240", "--frame-id", f"{cam}_link", "--target-id", f"{cam}_obj",
                 "--first-sec", str(100 * (k + 1)), "--ros-args", "-r", f"image:=/{cam}/image",
                 "-r", f"detections:=/{cam}/detections"], cwd=HERE, stdout=subprocess.PIPE, text=True)
        end = time.monotonic() + 60
        while any(p.poll() is None for p in cams.values()) and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        spin_until(ex, lambda: False, 2.0)
        for k, cam in enumerate(CAMS):
            msgs = [m for m in got[cam] if m.detections]
            assert msgs, f"nothing from {cam}\n{read_log(log)}"
            assert all(m.header.frame_id == f"{cam}_link" for m in msgs)
            assert all(100 * (k + 1) <= m.header.stamp.sec < 100 * (k + 2) for m in msgs)
            assert all([d.id for d in m.detections] == [f"{cam}_obj"] for m in msgs)
        # the stalled camera did not hold the others back
        assert len({m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got["front"]}) >= 30
        assert len({m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in got["left"]}) >= 30
    finally:
        for p in cams.values():
            if p.poll() is None:
                p.kill()
        rc = stop(proc)
        ex.shutdown()
        listener.destroy_node()
    assert rc == 0
