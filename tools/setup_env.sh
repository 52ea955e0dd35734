#!/usr/bin/env bash
# Source me:  source tools/setup_env.sh
# Fresh machine -> project venv (.venv) with ROS 2 Jazzy wheels, CPU torch and the ar_ros colcon build,
# then this shell is set up to run nodes and tests. Safe to source again; reruns take a few seconds.
# Set AR_ROS_SKIP_BUILD=1 to only set up the venv (the ROS-free core and CLI then work without ROS).
_ar_ros_setup() {
  local root venv py stamp want ldp standin=""
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local distro="${AR_ROS_DISTRO:-jazzy}" ros_reqs ws
  case "$distro" in
    jazzy) ros_reqs="$root/requirements-ros.txt"; venv="${AR_ROS_VENV:-$root/.venv}"; ws=".ros_ws" ;;
    kilted) ros_reqs="$root/requirements-ros-kilted.txt"; venv="${AR_ROS_VENV:-$root/.venv-kilted}"
            ws=".ros_ws-kilted" ;;
    *) echo "[ar_ros] AR_ROS_DISTRO must be jazzy or kilted, got '$distro'"; return 1 ;;
  esac
  py="$(command -v python3.11 || command -v python3)"
  if [ ! -x "$venv/bin/python" ]; then
    echo "[ar_ros] creating $venv"
    "$py" -m venv "$venv" || return 1
  fi
  stamp="$venv/.ar_ros_requirements"
  want="$(cat "$ros_reqs" "$root/requirements.txt" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[ar_ros] installing requirements into $venv (first run: ~1-2 min)"
    _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      -r "$ros_reqs" -r "$root/requirements.txt" || return 1
    _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      --no-deps --no-build-isolation -e "$root" || return 1
    echo "$want" > "$stamp"
  fi
  bash "$root/tools/fix_ros_wheel_cmake.sh" "$venv" || return 1
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  # Resolve the ROS wheels' library path once, so later Python starts skip the bootstrapper's re-exec.
  ldp="$(python -c 'import os; print(os.environ.get("LD_LIBRARY_PATH", ""))')" || return 1
  export LD_LIBRARY_PATH="$ldp" _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV"
  export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
  [ "${AR_ROS_SKIP_BUILD:-0}" = 1 ] && return 0
  # Build our vision_msgs stand-in only when the real package is not installed.
  if [ ! -f "$VIRTUAL_ENV/share/vision_msgs/package.xml" ]; then
    standin="$root/test/standins/vision_msgs"
  fi
  # Build through a symlinked source path: CMake refuses generated targets whose include paths (the
  # venv's numpy headers) lie inside the package source dir, and .venv sits in the repo.
  # One build at a time (two shells sourcing this at once raced in colcon), and none when nothing that
  # the install depends on changed: with --symlink-install, edits to installed files need no rebuild,
  # only a different set of files or a changed interface / CMake / package file does.
  mkdir -p "$root/$ws/src" && ln -sfn ../.. "$root/$ws/src/ar_ros"
  local build_key
  build_key="$( cd "$root" && { find ar_ros launch config rviz scripts msg srv -type f ! -name '*.pyc' \
      ! -path '*/__pycache__/*' | LC_ALL=C sort; cat CMakeLists.txt package.xml msg/* srv/*; \
      echo "$standin"; } | sha256sum | cut -c1-16 )"
  ( flock 9
    [ "$(cat "$root/$ws/.ar_ros_build" 2>/dev/null)" = "$build_key" ] && [ -f "$root/$ws/install/setup.bash" ] \
      && exit 0
    ( cd "$root" && colcon --log-base $ws/log build --base-paths $ws/src/ar_ros $standin \
        --build-base $ws/build --install-base $ws/install --symlink-install \
        --event-handlers console_cohesion- summary- status- \
        --cmake-args -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DCMAKE_BUILD_TYPE=Release \
        > $ws/colcon_build.log 2>&1 ) || { echo "[ar_ros] colcon build failed:"; tail -40 "$root/$ws/colcon_build.log"
                                           exit 1; }
    echo "$build_key" > "$root/$ws/.ar_ros_build"
  ) 9>"$root/$ws/.build.lock" || return 1
  local had_u=0; [[ $- == *u* ]] && had_u=1; set +u   # colcon's setup.bash is not `set -u` safe
  # shellcheck disable=SC1091
  source "$root/$ws/install/setup.bash"
  [ $had_u = 1 ] && set -u
  return 0
}
_ar_ros_setup
