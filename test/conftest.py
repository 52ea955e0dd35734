"""Shared fixtures. ROS isolation: one DDS domain per pytest worker, localhost discovery only."""
import os

import numpy as np
import pytest


def _domain_id() -> int:
    base = int(os.environ.get("ROS_TEST_DOMAIN_BASE", "60"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return base + int(worker[2:] or 0)


# Must happen before the first rclpy.init() in this process (and is inherited by node subprocesses).
os.environ["ROS_DOMAIN_ID"] = str(_domain_id())
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.pop("ROS_LOCALHOST_ONLY", None)


@pytest.fixture(scope="session")
def small_net():
    """A real (randomly initialised, deterministic) small network for engine tests."""
    import torch
    from ar_ros.model import AlphaRefineNet, NetConfig
    torch.manual_seed(0)
    return AlphaRefineNet(NetConfig(depth=18, input_size=128, with_top=False, crop_mode="clean")).eval()


@pytest.fixture(scope="session")
def shipped_without_head():
    """The shipped network without its quality head: a model like the authors', where keep_iou decides."""
    from dataclasses import replace
    from ar_ros.backends.factory import DEFAULT_CHECKPOINT
    from ar_ros.model.checkpoint import build_network, load_checkpoint
    state, config, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    return build_network({k: v for k, v in state.items() if not k.startswith("quality_head.")},
                         replace(config, quality_head=False)).eval()


@pytest.fixture
def frame():
    """A 480x640 RGB frame: smooth noise background with a bright rectangle at (200,150,120,90)."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 80, size=(480, 640, 3), dtype=np.uint8)
    img[150:240, 200:320] = (220, 180, 40)
    return img


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, small_net):
    """The small random network saved in our format, for nodes started from a params file."""
    from ar_ros.model import save_checkpoint
    return str(save_checkpoint(tmp_path_factory.mktemp("model") / "small.pt", small_net))


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, small_net):
    """The small network exported by ``export_onnx`` (a folder for the onnxruntime backends)."""
    pytest.importorskip("onnxruntime")
    from ar_ros.backends.onnx_export import export_onnx
    return export_onnx(small_net, tmp_path_factory.mktemp("onnx"))


@pytest.fixture
def ros_context():
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)
