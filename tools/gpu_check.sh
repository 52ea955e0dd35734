#!/usr/bin/env bash
# The GPU check on a bare GPU machine: environment, CUDA parity checks and GPU benchmarks in one go
# (benchmarks/gpu_check.py). Needs no venv, no ROS and no build: only the source tree and a Python with
# torch, numpy and opencv (onnxruntime, matplotlib, pytest when present).
#
#   tools/gpu_check.sh [--dry-run] [gpu_check.py options]     PY=python3  OUT=out/gpu_check
#
# --dry-run: the same on CPU with few iterations, to test the plumbing where there is no GPU.
# Results: OUT/gpu_check.json, OUT/gpu_check.png; the last line printed is one JSON object.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-python3}"
OUT="${OUT:-out/gpu_check}"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check: PY=$PY is not a Python on this machine" >&2
  exit 2
fi
if ! missing="$("$PY" -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "numpy", "cv2") if u.find_spec(m) is None))')"; then
  echo "gpu_check: $PY does not run" >&2
  exit 2
fi
if [ -n "$missing" ]; then
  echo "gpu_check: $PY lacks $missing (needed: torch, numpy, opencv-python-headless)" >&2
  exit 2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
exec "$PY" "$root/benchmarks/gpu_check.py" --out "$OUT" "$@"
