"""Live replay: bag -> player -> real refiner node -> recorder bag."""
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from ar_ros.eval import bags  # noqa: E402
from ar_ros.data.base_trackers import jittered_gt  # noqa: E402
from ar_ros.data.synthetic import Sequence  # noqa: E402
from ar_ros.ros.live_replay import live_replay  # noqa: E402

pytestmark = pytest.mark.ros


def test_live_replay_records_every_frame(tmp_path, small_checkpoint):
    frames = list(Sequence(100_000, 10, (320, 240)))
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames), jittered_gt(gt, 2), gt, fps=10)
    report = live_replay(bag, out=tmp_path / "out", checkpoint=small_checkpoint, rate=0.0, progress=False)
    assert report.published == 10 and report.received == 10 and report.dropped == 0
    summary = report.summary()
    assert summary["latency_ms_p50"] > 0
    reader = bags.open_reader(tmp_path / "out")
    try:
        msgs = [m for _, _, _, m in bags.messages(reader, bags.typestore())]
    finally:
        reader.close()
    assert len(msgs) == 10 and all(m.detections[0].id == "target" for m in msgs)


def test_live_replay_plays_compressed_bags_to_a_compressed_node(tmp_path, small_checkpoint):
    """A bag of CompressedImage goes to the node's image/compressed input (image_transport: compressed)."""
    frames = list(Sequence(100_000, 6, (320, 240)))
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "c", (f.image for f in frames), jittered_gt(gt, 2), gt, compressed=True)
    report = live_replay(bag, checkpoint=small_checkpoint, rate=0.0, progress=False)
    assert report.published == 6 and report.received == 6
    assert all(m.detections[0].id == "target" for m in report.refined.values())


def test_live_replay_cli_runs_the_node_on_an_onnx_export(tmp_path, onnx_dir, capsys):
    """ar-refine live-replay takes the node's model options: backend onnxruntime with an export folder."""
    import json
    from ar_ros.cli import main
    frames = list(Sequence(100_000, 4, (320, 240)))
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames), jittered_gt(gt, 2), gt, fps=10)
    with pytest.raises(SystemExit) as done:
        main(["live-replay", str(bag), "--checkpoint", str(onnx_dir), "--backend", "onnxruntime", "--rate", "0",
              "--json", "--no-progress"])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    info = json.loads(out.out)
    assert info["published"] == 4 and info["received"] == 4
