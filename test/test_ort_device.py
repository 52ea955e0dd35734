"""Where ONNX Runtime runs for each device setting, and what happens on a GPU machine whose onnxruntime has
no (working) CUDA provider: the selection logic is plain Python, tested here for every case."""
import pytest
import torch

from ar_ros.backends.base import BackendError
from ar_ros.backends.factory import resolve_precision
from ar_ros.backends.onnx import CUDA_PROVIDER, provider_problem, select_providers

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]   # PyPI's onnxruntime
GPU_BUILD = [CUDA_PROVIDER, "CPUExecutionProvider"]             # onnxruntime-gpu


def test_auto_on_a_gpu_machine_takes_the_cuda_provider_when_installed_and_warns_when_not():
    providers, device, note = select_providers("auto", GPU_BUILD, gpu_present=True)
    assert providers[0] == (CUDA_PROVIDER, {"device_id": 0}) and device == torch.device("cuda", 0) and note == ""
    providers, device, note = select_providers("auto", CPU_ONLY, gpu_present=True)
    assert providers == ["CPUExecutionProvider"] and device.type == "cpu"
    assert "no CUDA provider" in note and "onnxruntime-gpu" in note
    assert select_providers("auto", CPU_ONLY, gpu_present=False)[2] == ""  # no GPU: nothing to say


def test_an_explicit_cuda_device_never_runs_on_cpu_instead():
    with pytest.raises(BackendError, match="needs onnxruntime-gpu"):
        select_providers("cuda", CPU_ONLY, gpu_present=True)
    providers, device, _ = select_providers("cuda:1", GPU_BUILD, gpu_present=True)
    assert providers[0] == (CUDA_PROVIDER, {"device_id": 1}) and device == torch.device("cuda", 1)
    assert select_providers("cpu", GPU_BUILD, gpu_present=True)[:2] == (["CPUExecutionProvider"], torch.device("cpu"))


def test_a_cuda_provider_that_did_not_load_is_an_error():
    cuda = torch.device("cuda", 0)
    assert "did not load" in provider_problem(cuda, ["CPUExecutionProvider"])
    assert provider_problem(cuda, [CUDA_PROVIDER, "CPUExecutionProvider"]) == ""
    assert provider_problem(torch.device("cpu"), ["CPUExecutionProvider"]) == ""


def test_auto_precision_is_fp32_for_the_exported_graphs_on_any_device():
    for device in (torch.device("cpu"), torch.device("cuda")):
        assert resolve_precision("auto", device, "onnxruntime")[0] == "fp32"
    with pytest.raises(ValueError, match="fp32"):
        resolve_precision("fp16", torch.device("cuda"), "onnxruntime")
