"""The executor the ar_ros executables spin.

rclpy's ``SingleThreadedExecutor`` rebuilds its wait set in Python on every ``spin_once``: with the
refiner node's 15 services (lifecycle, parameters, ours) that is about 0.45 ms per callback, paid for
every image and every detections message. rclpy's ``EventsExecutor`` (Jazzy and later, C++) dispatches
callbacks without that loop: node overhead at 640x480 was 3.2 ms with it and 5.7 ms without in two
consecutive runs of ``benchmarks/bench_node.py --executor events|single``. Humble has no EventsExecutor and gets the single-threaded one.
``AR_ROS_EXECUTOR=single`` forces the single-threaded executor anywhere.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Callable, List, NoReturn, Optional

import rclpy
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def make_executor(context: Optional[Any] = None):
    """An ``EventsExecutor`` where rclpy has one (unless ``AR_ROS_EXECUTOR=single``), else single-threaded."""
    if os.environ.get("AR_ROS_EXECUTOR", "events") != "single":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # Humble
            pass
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def startup_error(err: Exception) -> str:
    """One line for a node that could not be built: a rejected ``-p`` value or our own ValueError."""
    if isinstance(err, InvalidParameterValueException):
        # rclpy's text is 'Invalid parameter value (V) for parameter. Reason: R[: name]' (Humble: args (text, name))
        text = str(err.args[0]) if err.args else str(err)
        return "invalid parameter: " + re.sub(r": [A-Za-z_][\w.]*$", "", text.split("Reason: ", 1)[-1])
    if isinstance(err, ParameterException):
        return "invalid parameter: " + re.sub(r": [A-Za-z_][\w.]*$", "", " ".join(str(a) for a in err.args))
    return str(err)


def _shutdown_quietly(signum: int, frame: Any) -> None:
    try:
        rclpy.try_shutdown()
    except Exception:  # already being shut down by rclpy's own handler
        pass


def run_node(prog: str, make_node: Callable[[], Any], start: Optional[Callable[[Any], bool]] = None,
             args: Optional[List[str]] = None) -> NoReturn:
    """What an executable's ``main`` does: init, build the node, ``start`` it, spin until SIGINT/SIGTERM, exit.

    Exit status (what launch ``respawn`` and systemd see): 0 after a signal, 2 when the node cannot be
    built (a bad ``-p`` value: one line on stderr, no traceback), 1 when ``start`` returns False (e.g.
    the model did not load; the node has logged why).
    """
    # On SIGINT rclpy shuts the context down, then calls the Python handler it found; the default one
    # raises KeyboardInterrupt inside whatever callback the main thread runs (the executor then logs a
    # FATAL "Exception in 'timers' callback"). This one only makes sure the context is down, so the loop
    # below ends on rclpy.ok() between callbacks.
    signal.signal(signal.SIGINT, _shutdown_quietly)
    rclpy.init(args=args if args is not None else sys.argv)
    try:
        node = make_node()
    except (ValueError, ParameterException) as err:
        print(f"{prog}: {startup_error(err)}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(2)
    executor = make_executor()
    executor.add_node(node)
    code = 0
    try:
        if start is not None and not start(node):
            code = 1
        # spin_once polling rather than spin(): a signal always ends the loop (rcl_wait can miss it)
        while code == 0 and rclpy.ok():
            executor.spin_once(timeout_sec=0.25)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001  a callback that raced the signal's shutdown (e.g. 'context is invalid')
        if rclpy.ok():
            raise
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(code)
