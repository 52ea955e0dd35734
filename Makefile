# Two commands on a fresh machine:  make demo  (the main job)   make test  (the tests)
# Both create .venv (ROS 2 Jazzy wheels + CPU torch), build the ROS package with colcon, and are safe to rerun.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench clean

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

clean:
	rm -rf .ros_ws out
