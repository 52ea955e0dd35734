"""ONNX export of template and search graphs, ONNX Runtime parity, backend selection errors."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from ar_ros import Refiner  # noqa: E402
from ar_ros.backends.onnx import BackendError, OnnxRuntimeBackend, session_options  # noqa: E402
from ar_ros.backends.onnx_export import export_onnx, max_box_difference  # noqa: E402


def test_export_matches_torch_within_0_05_px(onnx_dir, small_net):
    assert small_net.training is False  # exporting must not flip the network into training mode
    assert max_box_difference(small_net, onnx_dir) < 0.05


def test_refiner_on_onnxruntime_matches_torch_with_several_targets(onnx_dir, small_net, frame):
    boxes = {"a": (200.0, 150.0, 120.0, 90.0), "b": (20.0, 30.0, 60.0, 50.0), "c": (500.0, 300.0, 80.0, 90.0)}
    results = []
    for r in (Refiner(small_net), Refiner(str(onnx_dir), backend="onnxruntime")):
        r.set_targets(frame, boxes)
        results.append(r.refine(frame, boxes, mask=True))
    for tid in boxes:
        assert np.allclose(results[0][tid].raw_box, results[1][tid].raw_box, atol=0.05)
        assert np.abs(results[0][tid].mask - results[1][tid].mask).max() < 1e-3


def test_sessions_take_torchs_thread_count_and_stop_spinning_after_each_run(onnx_dir):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what the node's `threads` parameter does
    try:
        refiner = Refiner(str(onnx_dir), backend="onnxruntime")
    finally:
        torch.set_num_threads(before)
    assert refiner.net.sessions
    for session in refiner.net.sessions.values():
        opts = session.get_session_options()
        assert opts.intra_op_num_threads == 1
        # spinning pool threads left behind by one session slow every other session in the process
        assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    assert session_options().intra_op_num_threads == 0  # ONNX Runtime's default


def test_info_describes_an_export_folder_and_its_engines(onnx_dir, capsys):
    import json
    from ar_ros.cli import main
    engines = onnx_dir / "tensorrt"
    engines.mkdir(exist_ok=True)
    (engines / "search_box.engine").write_bytes(b"serialised engine")
    (engines / "search_box.json").write_text(json.dumps({"gpu": "Orin", "tensorrt": "8.6.2"}))
    try:
        with pytest.raises(SystemExit) as done:
            main(["info", str(onnx_dir), "--json"])
        assert done.value.code == 0
        info = json.loads(capsys.readouterr().out)
        assert info["config"]["input_size"] == 128 and set(info["files"]) >= {"template", "search_box"}
        assert info["tensorrt"] == {"search_box": {"gpu": "Orin", "tensorrt": "8.6.2"}}
        with pytest.raises(SystemExit):
            main(["info", str(onnx_dir)])
        text = capsys.readouterr().out
        assert "search_mask.onnx" in text and "gpu Orin, tensorrt 8.6.2" in text
    finally:
        for f in engines.iterdir():
            f.unlink()
        engines.rmdir()


def test_backend_errors_are_clear(tmp_path, small_net):
    with pytest.raises(BackendError, match="export onnx"):
        OnnxRuntimeBackend(tmp_path)
    with pytest.raises(ValueError, match="folder"):
        Refiner(small_net, backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        Refiner(small_net, backend="tensorrt-9000")
    (tmp_path / "ar_ros_onnx.json").write_text('{"config": {}, "files": {"template": "template.onnx"}}')
    with pytest.raises(BackendError, match="missing"):
        OnnxRuntimeBackend(tmp_path)
    (tmp_path / "template.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot load"):
        OnnxRuntimeBackend(tmp_path)


@pytest.mark.ros
def test_node_runs_with_the_onnxruntime_backend(ros_context, onnx_dir, frame):
    pytest.importorskip("vision_msgs.msg")
    from test_node import BOX, Harness
    from ros_helpers import spin_until
    # cuda_graphs is for torch on CUDA: here it is ignored with a warning, not a failed configure
    h = Harness(ros_context, str(onnx_dir), backend="onnxruntime", cuda_graphs=True)
    try:
        assert h.node.refiner.backend == "onnxruntime"
        h.send(frame, 1, [("a", BOX)])
        assert spin_until(h.ex, lambda: h.got["det"])
        assert [d.id for d in h.got["det"][0].detections] == ["a"]
    finally:
        h.close()


def test_int8_quantisation_is_gated_on_agreement_with_fp32(tmp_path, small_net, frame):
    from ar_ros.backends.onnx import INT8_FILES
    from ar_ros.backends.onnx_export import INT8_FILE, quantize_int8
    from ar_ros.train.int8_frames import calibration_batches
    out = export_onnx(small_net, tmp_path / "q")
    calib = calibration_batches(out, n_batches=2, batch=2)
    with pytest.raises(BackendError, match="not kept"):
        quantize_int8(out, calib, min_iou=1.01)
    assert not (out / INT8_FILE).exists()
    agreement = quantize_int8(out, calib, min_iou=0.0)
    assert 0.0 <= agreement <= 1.0 and (out / INT8_FILE).exists()
    r = Refiner(str(out), backend="onnxruntime-int8")
    r.set_target(frame, (200.0, 150.0, 120.0, 90.0), "a")
    res = r.refine(frame, {"a": (200.0, 150.0, 120.0, 90.0)})["a"]
    assert len(res.raw_box) == 4
    with pytest.raises(BackendError, match="no int8 graph"):
        OnnxRuntimeBackend(export_onnx(small_net, tmp_path / "plain"), int8=True)
    # the whole-sequence check the CLI runs before keeping the graph; a refiner agrees with itself exactly
    from ar_ros.backends.onnx_export import drop_int8
    from ar_ros.eval.benchmark import agreement
    from ar_ros.data.synthetic import suite
    fp32 = Refiner(str(out), backend="onnxruntime")
    tiny = suite("tiny")[:1]
    assert agreement(fp32, fp32, tiny) == pytest.approx(1.0)
    assert 0.0 < agreement(fp32, r, tiny) <= 1.0
    drop_int8(out)
    assert not (out / INT8_FILE).exists() and not (out / INT8_FILES["search_mask"]).exists()
    with pytest.raises(BackendError, match="no int8 graph"):
        Refiner(str(out), backend="onnxruntime-int8")


def test_int8_box_mask_graph_is_used_for_masks_only_when_its_masks_agree(tmp_path, small_net, frame, monkeypatch):
    import json
    from ar_ros.backends import onnx as onnx_backend, onnx_export
    from ar_ros.train.int8_frames import calibration_batches
    out = export_onnx(small_net, tmp_path / "q")
    calib = calibration_batches(out, n_batches=2, batch=2)
    box = (200.0, 150.0, 120.0, 90.0)
    for mask_gate, kept in ((0.0, True), (1.01, False)):
        monkeypatch.setattr(onnx_export, "MASK_MIN_IOU", mask_gate)
        onnx_export.drop_int8(out)
        onnx_export.quantize_int8(out, calib, min_iou=0.0)
        files = json.loads((out / onnx_backend.MANIFEST).read_text())["files"]
        assert "search_box_int8" in files and ("search_mask_int8" in files) == kept
        assert (out / onnx_backend.INT8_FILES["search_mask"]).exists() == kept
        backend = onnx_backend.OnnxRuntimeBackend(out, int8=True)
        graphs = {k: Path(v._model_path).name for k, v in backend.sessions.items()}
        assert graphs["search_box"] == "search_box_int8.onnx"
        assert graphs["search_mask"] == ("search_mask_int8.onnx" if kept else "search_mask.onnx")
        assert graphs["search_fused"] == ("search_fused_int8.onnx" if kept else "search_fused.onnx")
        assert backend.mask_logits  # fused boxes and masks on graphs of the same precision
        r = Refiner(str(out), backend="onnxruntime-int8", box_mode="fused")
        r.set_target(frame, box, "a")
        res = r.refine(frame, {"a": box}, mask=True)["a"]
        assert np.isfinite(res.raw_box).all() and res.mask.shape == frame.shape[:2]
    # box+mask int8 kept, fused-box int8 not: fused boxes then run the int8 box+mask graph, not fp32 search_fused
    monkeypatch.setattr(onnx_export, "MASK_MIN_IOU", 0.0)
    onnx_export.quantize_int8(out, calib, min_iou=0.0)
    manifest = json.loads((out / onnx_backend.MANIFEST).read_text())
    del manifest["files"]["search_fused_int8"]
    (out / onnx_backend.MANIFEST).write_text(json.dumps(manifest))
    assert not onnx_backend.OnnxRuntimeBackend(out, int8=True).mask_logits
    assert onnx_backend.OnnxRuntimeBackend(out).mask_logits  # fp32: both graphs fp32


def test_tensorrt_errors_are_clear_without_a_gpu(onnx_dir):
    from ar_ros.backends.tensorrt import adopt_engines, stale_reason
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    import torch
    if not has_trt or not torch.cuda.is_available():
        with pytest.raises((BackendError, ValueError), match="tensorrt|CUDA"):
            Refiner(str(onnx_dir), device="auto", backend="tensorrt")
        with pytest.raises(BackendError, match="tensorrt|CUDA"):
            adopt_engines(onnx_dir)
    saved = {"gpu": "Orin", "compute_capability": "8.7", "tensorrt": "8.6.2", "onnx_sha256": "ab"}
    here = dict(saved, gpu="H100", tensorrt="10.3.0")
    reason = stale_reason(saved, here)
    assert "gpu: engine 'Orin' vs here 'H100'" in reason and "tensorrt" in reason
    assert stale_reason(saved, dict(saved)) == ""



def test_fused_boxes_come_from_the_graph_that_stops_before_the_masks_upsampling(onnx_dir, small_net, tmp_path):
    """box_mode fused without masks runs search_fused (mask logits at half size): the same boxes as the
    box+mask graph, which an export without search_fused (older ar_ros) still runs."""
    import json
    import shutil
    import torch
    from ar_ros.backends.onnx import MANIFEST
    from ar_ros.model import load_network
    from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
    from ar_ros.data.synthetic import Sequence
    backend = OnnxRuntimeBackend(onnx_dir)
    assert backend.mask_logits
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = small_net.search(images, small_net.template(images), with_mask=True, mask_logits=True)
    got = backend.search(images, backend.template(images), with_mask=True, mask_logits=True)
    assert got["mask_logits"].shape == (2, 1, 64, 64) and "mask" not in got
    assert (got["mask_logits"] - want["mask_logits"]).abs().max() < 1e-3
    # the shipped model: its masks are real, so its fused boxes differ from its corner boxes
    shipped = export_onnx(load_network(DEFAULT_CHECKPOINT)[0], tmp_path / "shipped")
    older = tmp_path / "older"
    shutil.copytree(shipped, older)
    manifest = json.loads((older / MANIFEST).read_text())
    del manifest["files"]["search_fused"]
    (older / MANIFEST).write_text(json.dumps(manifest))
    assert not OnnxRuntimeBackend(older).mask_logits
    from ar_ros.data.base_trackers import jittered_gt
    seq = Sequence(100_001, 8, (320, 240))
    bases = jittered_gt([seq[t].box for t in range(len(seq))], seed=3)
    refiners = [Refiner(str(shipped), backend="onnxruntime", box_mode="fused"),
                Refiner(str(older), backend="onnxruntime", box_mode="fused"),
                Refiner(str(shipped), backend="onnxruntime", box_mode="corner")]
    moved = 0
    for r in refiners:
        r.set_target(seq[0].image, seq[0].box, "t")
    for t in range(1, len(seq)):
        frame = seq[t]
        fused, older_fused, corner = (r.refine(frame.image, {"t": bases[t]})["t"].raw_box for r in refiners)
        np.testing.assert_allclose(fused, older_fused, atol=1e-3)
        moved += not np.allclose(fused, corner, atol=0.01)
    assert moved >= 3  # the mask's box took part
