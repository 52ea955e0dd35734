"""What this CPU offers the torch backend: its name, its bf16 units, the features that decide bf16 / int8 speed.

bf16 pays on a CPU only where it has bf16 units (Intel AMX, AVX-512 BF16 on AMD Zen 4/5, Arm BF16); elsewhere
oneDNN emulates it, slower than fp32, so it is refused there.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_bf16_units() -> str:
    """This CPU's bf16 units as a name ('AMX', 'AVX-512 BF16', 'Arm BF16'), or '' when it has none."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("amx_bf16"):
        return "AMX"
    if caps.get("avx512_bf16"):
        return "AVX-512 BF16"
    # torch's oneDNN query is true on any AVX-512 x86 CPU (emulated bf16), so it decides only on Arm
    if platform.machine().lower() in ("aarch64", "arm64") and torch.backends.mkldnn.is_available() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "Arm BF16"
    return ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what torch or the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return str(caps.get("cpu_name") or platform.processor() or platform.machine())


def cpu_features() -> str:
    """The CPU features that decide bf16 / int8 speed, as one line for benchmark output."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    names = ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")
    seen = " ".join(n for n in names if caps.get(n)) or "none of " + ", ".join(names)
    return f"{cpu_name()}, {caps.get('num_logical_cores', os.cpu_count())} logical cores: {seen}; " \
           f"bf16 units: {cpu_bf16_units() or 'none'}"


def bf16_problem(device: torch.device) -> str:
    """Why bf16 cannot be used on ``device`` ('' when it can)."""
    if device.type != "cpu":
        return f"precision 'bf16' is for CPUs with bf16 units; on {device.type} use 'fp16'"
    if not cpu_bf16_units():
        return (f"precision 'bf16' needs a CPU with bf16 units (Intel AMX, AVX-512 BF16 or Arm BF16); this one "
                f"({cpu_name()}) has none and would emulate it, slower than fp32: use 'fp32'")
    return ""
