#!/usr/bin/env bash
# The ROS message wheels on PyPI bake the build machine's paths (/opt/python/cp311-cp311/...) into their
# exported CMake targets. Rewrite them to this venv's Python and numpy include dirs. Idempotent.
# Usage: fix_ros_wheel_cmake.sh VENV
set -euo pipefail
venv="${1:?usage: fix_ros_wheel_cmake.sh VENV}"
read -r py_inc np_inc < <(_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$venv/bin/python" -c \
  'import sysconfig, numpy; print(sysconfig.get_paths()["include"], numpy.get_include())')
n=0
while IFS= read -r -d '' f; do
  sed -i \
    -e "s#/opt/python/cp[0-9]*-cp[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#${np_inc}#g" \
    -e "s#/opt/python/cp[0-9]*-cp[0-9]*/include/python3\.[0-9]*#${py_inc}#g" "$f"
  n=$((n+1))
done < <(grep -rlZ --include='*.cmake' '/opt/python/cp' "$venv/share" 2>/dev/null || true)
[ "$n" = 0 ] || echo "fix_ros_wheel_cmake: patched $n file(s) under $venv/share"
