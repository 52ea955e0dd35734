"""The plain-Python logic of the TensorRT backend, on CPU (no tensorrt here): which layers an fp16 engine
keeps in fp32, engine keys per GPU, profile shapes, dtype and shape checks. Engines need a GPU."""
import json

import pytest
import torch

from ar_ros.backends.base import BackendError, SearchBackend
from ar_ros.backends.tensorrt import (TensorRTBackend, concrete_shape, engine_keys, fp32_nodes, input_shape_problem,
                                      io_names_fit, keeps_fp32, machine_key, profile_shapes, stale_reason, torch_dtype)
from ar_ros.engine.refiner import DEFAULT_CHECKPOINT
from ar_ros.model import load_network


@pytest.fixture(scope="module")
def shipped_search_graph(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    from ar_ros.backends.onnx_export import export_onnx
    torch.set_num_threads(1)
    net = load_network(DEFAULT_CHECKPOINT)[0]
    out = export_onnx(net, tmp_path_factory.mktemp("onnx"))
    return onnx.load(str(out / "search_mask.onnx")), net.config, out


def test_fp16_engines_keep_the_score_maps_soft_argmax_wide_layers_and_stem_in_fp32(shipped_search_graph):
    model, config, _ = shipped_search_graph
    keep = fp32_nodes(model, config.backbone)
    names = [n.name for n in model.graph.node]
    assert {"/corner_head/conv5_tl/Conv", "/corner_head/conv5_br/Conv", "/corner_head/fine_tl/out/Conv",
            "/corner_head/fine_br/out/Conv"} <= set(keep)
    assert [n for n in names if n.startswith("/corner_head/Softmax")] and \
        all(n in keep for n in names if n.startswith(("/corner_head/Softmax", "/corner_head/MatMul")))
    # the two folded MobileNetV2 layers with |w| ~100 / |b| ~2e3, and the stem
    assert {"/feature_extractor/features.1/conv/conv.0/Conv", "/feature_extractor/features.2/conv/conv.0/Conv",
            } <= set(keep)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/feature_extractor/")]
    assert convs[0] in keep
    # the towers, the neck, the mask decoder stay fp16
    assert not any(n.startswith(("/corner_head/conv1_", "/corner_head/conv4_", "/neck/", "/mask_head/")) for n in keep)
    assert len([n for n in keep if n in convs]) == 3


def test_tensorrt_layer_names_map_to_their_onnx_nodes():
    nodes = ["/corner_head/Softmax", "/corner_head/conv5_tl/Conv"]
    assert keeps_fp32("/corner_head/Softmax", nodes)
    assert not keeps_fp32("/corner_head/Softmax_1", nodes)  # another ONNX node
    assert not keeps_fp32("(Unnamed Layer* 12) [Shuffle]", nodes)


def test_engine_keys_name_the_gpu_they_were_built_on(tmp_path):
    onnx_file = tmp_path / "g.onnx"
    onnx_file.write_bytes(b"graph")
    orin = machine_key("10.3.0", onnx_file, {"gpu": "Orin", "compute_capability": "8.7"})
    h100 = machine_key("10.3.0", onnx_file, {"gpu": "H100", "compute_capability": "9.0"})
    assert orin["onnx_sha256"] == h100["onnx_sha256"] and len(orin["onnx_sha256"]) == 64
    assert stale_reason(orin, h100) == ("gpu: engine 'Orin' vs here 'H100'; "
                                        "compute_capability: engine '8.7' vs here '9.0'")
    assert stale_reason(orin, dict(orin)) == ""
    (tmp_path / "tensorrt").mkdir()
    for graph in ("template", "search_fused"):
        (tmp_path / "tensorrt" / f"{graph}.engine").write_bytes(b"x")
        (tmp_path / "tensorrt" / f"{graph}.json").write_text(json.dumps(orin))
    assert engine_keys(tmp_path) == {"template": orin, "search_fused": orin}


def test_profile_shapes_and_the_checks_of_run_time_shapes(shipped_search_graph):
    _, config, _ = shipped_search_graph
    shapes = profile_shapes("search_box", config, 8)
    cells, channels = (config.feat_size // 2) ** 2, config.channels["layer3"]
    assert shapes["images"] == ((1, 3, 128, 128), (4, 3, 128, 128), (8, 3, 128, 128))
    assert shapes["kernels"][2] == (8, cells, channels)
    assert set(profile_shapes("template", config, 8)) == {"images"}
    lo, _, hi = shapes["images"]
    assert input_shape_problem("images", (8, 3, 128, 128), lo, hi) == ""
    assert "outside the engine's profile" in input_shape_problem("images", (9, 3, 128, 128), lo, hi)
    assert input_shape_problem("images", (1, 3, 128), lo, hi)
    assert concrete_shape("boxes", [4, 4]) == (4, 4)
    with pytest.raises(BackendError, match="unknown dimensions"):
        concrete_shape("mask", (-1, 1, 128, 128))
    assert torch_dtype("HALF") == torch.float16 and torch_dtype("FLOAT") == torch.float32
    with pytest.raises(BackendError):
        torch_dtype("FP8")


def test_the_backend_is_a_search_backend_and_says_what_it_needs(shipped_search_graph):
    assert issubclass(TensorRTBackend, SearchBackend)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="tensorrt|CUDA"):
            TensorRTBackend(shipped_search_graph[2])


def test_engines_of_a_network_with_a_quality_head_register_and_others_do_not():
    box = {"images", "kernels", "boxes", "score"}
    assert io_names_fit("search_box", box) and io_names_fit("search_box", box | {"quality", "base_quality"})
    assert not io_names_fit("search_box", box | {"quality"})
    assert not io_names_fit("search_box", box | {"mask"})
    assert io_names_fit("template", {"images", "kernels"})
    assert not io_names_fit("template", {"images", "kernels", "quality", "base_quality"})
