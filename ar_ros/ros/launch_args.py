"""What the launch files share: the node's model parameters as launch arguments, named, defaulted and
described by the node's parameter table (``ros/params.py``), so ``ros2 launch ... precision:=bf16`` takes what
``-p precision:=bf16`` takes. Only the two functions import ``launch``; the names are plain data (tests read them
where ``launch`` is not installed).
"""
from __future__ import annotations

from typing import Any, Dict, List

#: node parameters every launch file that starts the refiner takes as launch arguments of the same name
MODEL_ARGUMENTS = ("checkpoint", "device", "precision", "backend")


def model_arguments() -> List[Any]:
    """``DeclareLaunchArgument`` for each of :data:`MODEL_ARGUMENTS`, default and description from the table."""
    from launch.actions import DeclareLaunchArgument

    from .params import BY_NAME
    return [DeclareLaunchArgument(name, default_value=str(BY_NAME[name].default),
                                  description=BY_NAME[name].description) for name in MODEL_ARGUMENTS]


def model_parameters() -> Dict[str, Any]:
    """The node's parameters set from those launch arguments (for ``Node(parameters=[..., this])``)."""
    from launch.substitutions import LaunchConfiguration
    return {name: LaunchConfiguration(name) for name in MODEL_ARGUMENTS}
