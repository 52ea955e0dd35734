"""The node's parameters: the rows of the one options table (``ar_ros/options.py``) that the node declares.

``config/ar_ros.yaml`` mirrors these defaults (a test keeps the two equal). Read-only parameters need a
lifecycle cleanup + configure (or a restart) to change; the others apply to the next frame.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Tuple

from ..options import NODE_PARAMS, Spec, problem

if TYPE_CHECKING:  # pragma: no cover
    from rcl_interfaces.msg import ParameterDescriptor

PARAMS: Tuple[Spec, ...] = NODE_PARAMS
BY_NAME: Dict[str, Spec] = {p.name: p for p in PARAMS}
DEFAULTS: Dict[str, Any] = {p.name: p.default for p in PARAMS if p.default is not None}


def validate(name: str, value: Any) -> str:
    """Why ``value`` is not acceptable for parameter ``name``; ``""`` when it is."""
    return problem(name, value) if name in BY_NAME else ""


def descriptor(spec: Spec) -> "ParameterDescriptor":
    """The rclpy descriptor of a parameter: its doc, read-only flag, choices and range."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    if spec.low is not None and spec.high is not None:  # the table gives both bounds or neither
        if isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))]
        elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return desc


YAML_HEADER = """\
# ar_ros node parameters, written from the options table (ar_ros/options.py) by
# `python -m ar_ros.ros.params > config/ar_ros.yaml` (a test keeps the two equal).
# '/**' applies to any node name and namespace. (ro) = read-only: restart or lifecycle
# cleanup + configure to change; the others can be changed live with `ros2 param set`.
/**:
  ros__parameters:
"""
YAML_FOOTER = """\
    # QoS overrides (standard rclpy parameters; the topic key is the resolved name), e.g. for a
    # camera that publishes best-effort:
    # qos_overrides:
    #   /image:
    #     subscription:
    #       reliability: best_effort
"""


def yaml_text() -> str:
    """``config/ar_ros.yaml``: every parameter with a default, its description as a comment."""
    import json
    import textwrap
    lines = [YAML_HEADER.rstrip("\n")]
    for spec in PARAMS:
        if spec.default is None:
            continue
        doc = ("(ro) " if spec.read_only else "") + spec.description
        lines += textwrap.wrap(doc, 96, initial_indent="    # ", subsequent_indent="    # ")
        lines.append(f"    {spec.name}: {json.dumps(spec.default)}")
    return "\n".join(lines) + "\n" + YAML_FOOTER


if __name__ == "__main__":
    print(yaml_text(), end="")
