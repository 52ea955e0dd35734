"""The node's parameters: the rows of the one options table (``ar_ros/options.py``) that the node declares.

``config/ar_ros.yaml`` mirrors these defaults (a test keeps the two equal). Read-only parameters need a
lifecycle cleanup + configure (or a restart) to change; the others apply to the next frame.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from ..options import NODE_PARAMS, Spec, problem

PARAMS: Tuple[Spec, ...] = NODE_PARAMS
BY_NAME: Dict[str, Spec] = {p.name: p for p in PARAMS}
DEFAULTS: Dict[str, Any] = {p.name: p.default for p in PARAMS if p.default is not None}


def validate(name: str, value: Any) -> str:
    """Why ``value`` is not acceptable for parameter ``name``; ``""`` when it is."""
    return problem(name, value) if name in BY_NAME else ""
