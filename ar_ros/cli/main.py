"""``ar-refine``: parse, run one command, turn its errors into one line and exit status 2; the ROS programs
(``node``, ``base-tracker``) take their arguments as ``ros2 run`` does."""
from __future__ import annotations

import sys
from typing import List, Optional

from .common import ROS_PROGRAMS
from .parser import build_parser


def _run_ros_program(command: str, rest: List[str]) -> None:
    """Start a node like `ros2 run` does: ``rest`` is ``[--ros-args -p name:=value --params-file F -r a:=b ...]``."""
    module, what = ROS_PROGRAMS[command]
    prog = f"ar-refine {command}"
    if rest[:1] in (["-h"], ["--help"]):
        print(f"usage: {prog} [--ros-args [-p NAME:=VALUE] [--params-file FILE] [-r FROM:=TO] ...]\n\n"
              f"Starts {what} in the foreground until Ctrl-C, taking the ROS arguments `ros2 run` takes. "
              "Needs ROS 2 in the environment (source tools/setup_env.sh, or a sourced workspace).")
        sys.exit(0)
    try:
        import importlib
        from rclpy.utilities import remove_ros_args
        main_of = importlib.import_module(module).main
    except ImportError as err:
        print(f"{prog}: error: needs ROS 2 (rclpy and the built ar_ros interfaces): {err}; source "
              "tools/setup_env.sh in this checkout, or install/setup.bash of a colcon workspace", file=sys.stderr)
        sys.exit(2)
    argv = [prog, *rest]
    try:
        stray = remove_ros_args(args=argv)[1:]
    except Exception as err:  # noqa: BLE001  rclpy's parse error names the bad ROS argument
        print(f"{prog}: error: bad ROS arguments: {err}", file=sys.stderr)
        sys.exit(2)
    if stray:
        print(f"{prog}: error: unexpected argument(s) {stray}: ROS arguments follow --ros-args "
              f"(e.g. {prog} --ros-args -p device:=cpu -r image:=/camera/image_raw)", file=sys.stderr)
        sys.exit(2)
    unknown = _unknown_node_parameters(rest) if command == "node" else []
    if unknown:  # rclpy would drop an override the node never declares, typo or not
        print(f"{prog}: error: no such parameter: {', '.join(unknown)} (the parameters: README, "
              "ar_ros/ros/params.py)", file=sys.stderr)
        sys.exit(2)
    main_of(argv)

def _unknown_node_parameters(ros_args: List[str]) -> List[str]:
    """Names given with ``-p NAME:=VALUE`` (or ``-p node:NAME:=VALUE``) that the refiner node does not have."""
    from ..ros.params import BY_NAME
    names = [ros_args[i + 1].split(":=", 1)[0].rsplit(":", 1)[-1] for i, arg in enumerate(ros_args[:-1])
             if arg in ("-p", "--param") and ":=" in ros_args[i + 1]]
    # use_sim_time: every node has it; qos_overrides.<topic>...: rclpy's QoS overrides
    return [n for n in names if n not in BY_NAME and n != "use_sim_time" and not n.startswith("qos_overrides.")]

def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROS_PROGRAMS:  # before argparse, which would take -p / -r for its own options
        _run_ros_program(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(0)
    from ..model import CheckpointError
    try:
        sys.exit(args.func(args))
    except (CheckpointError, ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        from ..eval.bags import BagExists
        text = f"{err.path} exists; add --force to replace it" if isinstance(err, BagExists) else err
        print(f"ar-refine {args.command}: error: {text}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
