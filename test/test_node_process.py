"""The node as launch would start it: installed executable, --params-file, remaps, other processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from ros_helpers import installed_executable, spin_until  # noqa: E402

pytestmark = pytest.mark.ros
HERE = Path(__file__).parent


def node_executable() -> str:
    return installed_executable("ar_ros")


def start_node(tmp_path, checkpoint, extra_params="", remaps=(), **overrides):
    """The installed node in its own process; ``overrides`` replace the defaults below (YAML values)."""
    # cpu_graphs off: a graph per batch size takes about a second to build at configure (test_graphs tests them)
    values = {"checkpoint": checkpoint, "device": "cpu", "max_targets": 4, "sync_slop": 0.02, "cpu_graphs": False,
              **overrides}
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n" + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in values.items())
                      + extra_params)
    cmd = [node_executable(), "--ros-args", "--params-file", str(params), *sum((["-r", r] for r in remaps), [])]
    log = open(tmp_path / "node.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, log


def stop(proc, timeout=15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return proc.returncode


def read_log(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def latest_diagnostics(msgs) -> dict:
    """Key/values of the newest ar_ros status seen so far."""
    for msg in reversed(msgs):
        for status in msg.status:
            if status.name.startswith("ar_ros"):
                return {kv.key: kv.value for kv in status.values}
    return {}


def get_params(ex, node, service, names):
    cli = node.create_client(GetParameters, service)
    assert cli.wait_for_service(timeout_sec=20.0)
    fut = cli.call_async(GetParameters.Request(names=names))
    # the node answers once it spins, after configure (model load and warm-up: seconds on a loaded machine)
    ex.spin_until_future_complete(fut, timeout_sec=60.0)
    assert fut.done(), "no answer from the node's parameter service within 60 s"
    return fut.result().values


def test_params_file_and_remaps_apply_and_sigint_exits_cleanly(ros_context, tmp_path, small_checkpoint):
    proc, log = start_node(tmp_path, small_checkpoint, "    mask_mode: binary\n",
                           remaps=["__node:=refiner", "__ns:=/robot", "image:=/cam/image", "detections:=/cam/dets"])
    watcher = Node("watcher", context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(watcher)
    try:
        assert spin_until(ex, lambda: ("refiner", "/robot") in watcher.get_node_names_and_namespaces(), 30.0), \
            read_log(log)
        values = get_params(ex, watcher, "/robot/refiner/get_parameters", ["mask_mode", "max_targets", "device"])
        assert [values[0].string_value, values[1].integer_value, values[2].string_value] == ["binary", 4, "cpu"]
        assert spin_until(ex, lambda: "/cam/image" in dict(watcher.get_topic_names_and_types())
                          and "/robot/refined/detections" in dict(watcher.get_topic_names_and_types()), 20.0)
        services = dict(watcher.get_service_names_and_types())
        for name in ("/robot/set_target", "/robot/clear_targets", "/robot/enable"):
            assert name in services
    finally:
        rc = stop(proc)
        ex.shutdown()
        watcher.destroy_node()
    assert rc == 0, read_log(log)


def test_frames_from_another_process_are_refined(ros_context, tmp_path, small_checkpoint):
    """A camera in its own process sends reliable 640x480 bgr8 frames: >= 95% come out refined."""
    proc, log = start_node(tmp_path, small_checkpoint, remaps=["image:=/cam/image", "detections:=/cam/dets"])
    got = []
    listener = Node("listener", context=ros_context)
    listener.create_subscription(Detection2DArray, "/refined/detections", got.append, 100)
    diags = []
    listener.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(listener)
    cam = None
    try:
        assert spin_until(ex, lambda: listener.count_publishers("/refined/detections") > 0, 30.0), read_log(log)
        cam = subprocess.Popen([sys.executable, str(HERE / "camera_publisher.py"), "--frames", "60", "--rate", "8",
                                "--ros-args", "-r", "image:=/cam/image", "-r", "detections:=/cam/dets"],
                               cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 60
        while cam.poll() is None and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        spin_until(ex, lambda: len(got) >= 60, 5.0)
        out = cam.communicate(timeout=10)[0]
        assert "sent 60" in out, out
        stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got if m.detections}
        assert all(m.detections[0].id == "obj" for m in got if m.detections)
        # transport: >= 95% of the frames reach the node; every frame that arrives is refined unless the
        # node was still busy with an earlier one (then it is skipped on purpose and counted)
        diag = {}
        assert spin_until(ex, lambda: diag.update(latest_diagnostics(diags)) or
                          int(diag.get("frames_refined", -1)) >= len(stamps), 10.0)
        received, skipped = int(diag["images_received"]), int(diag["skipped_stale"])
        assert received >= 57, f"only {received} of 60 frames reached the node\n{diag}"
        assert len(stamps) + skipped >= received - 1, f"{len(stamps)} refined, {skipped} skipped\n{diag}"
        assert len(stamps) >= 45, f"only {len(stamps)} of 60 frames refined\n{diag}\n{read_log(log)}"
    finally:
        if cam is not None and cam.poll() is None:
            cam.kill()
        rc = stop(proc)
        ex.shutdown()
        listener.destroy_node()
    assert rc == 0


def test_incompatible_qos_is_logged_with_the_policy(ros_context, tmp_path, small_checkpoint):
    proc, log = start_node(tmp_path, small_checkpoint, remaps=["image:=/qos/image"])
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    cam = Node("be_camera", context=ros_context)
    cam.create_publisher(Image, "/qos/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(cam)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and "incompatible QoS" not in read_log(log):
            ex.spin_once(timeout_sec=0.1)
        text = read_log(log)
        assert "incompatible QoS on subscription '/qos/image'" in text and "RELIABILITY" in text, text
    finally:
        stop(proc)
        ex.shutdown()
        cam.destroy_node()


def test_executables_spin_the_events_executor_where_rclpy_has_it(monkeypatch):
    from ar_ros.ros.executor import make_executor
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:  # Humble
        EventsExecutor = None
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        ex = make_executor(context=ctx)
        if EventsExecutor is None:
            assert type(ex) is SingleThreadedExecutor
        else:  # a factory function returning the C++ executor
            assert type(ex) is type(EventsExecutor(context=ctx)) and "EventsExecutor" in type(ex).__name__
        ex.shutdown()
        monkeypatch.setenv("AR_ROS_EXECUTOR", "single")
        ex = make_executor(context=ctx)
        assert type(ex) is SingleThreadedExecutor
        ex.shutdown()
    finally:
        rclpy.try_shutdown(context=ctx)
