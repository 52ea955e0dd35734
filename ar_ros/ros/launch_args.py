"""What the launch files that start the refiner share: a params file, the node's model parameters as launch
arguments (named, defaulted and described by the node's parameter table, ``ros/params.py``, so
``ros2 launch ... precision:=bf16`` takes what ``-p precision:=bf16`` takes) and ``use_rviz``. Only the two
functions import ``launch``; the names are plain data (tests read them where ``launch`` is not installed).
"""
from __future__ import annotations

from typing import Any, Dict, List

#: node parameters that are launch arguments of the same name
MODEL_ARGUMENTS = ("checkpoint", "device", "precision", "backend")
#: every launch argument :func:`model_arguments` declares
ARGUMENTS = ("params_file", *MODEL_ARGUMENTS, "use_rviz")


def model_arguments(rviz: str = "also start rviz on the outputs") -> List[Any]:
    """``DeclareLaunchArgument`` for each of :data:`ARGUMENTS`; ``rviz`` describes ``use_rviz``."""
    import os

    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument

    from .params import BY_NAME
    config = os.path.join(get_package_share_directory("ar_ros"), "config", "ar_ros.yaml")
    return [DeclareLaunchArgument("params_file", default_value=config,
                                  description="node parameters (YAML); the model arguments override it"),
            *(DeclareLaunchArgument(name, default_value=str(BY_NAME[name].default),
                                    description=BY_NAME[name].description) for name in MODEL_ARGUMENTS),
            DeclareLaunchArgument("use_rviz", default_value="false", description=rviz)]


def model_parameters() -> Dict[str, Any]:
    """The node's parameters set from those launch arguments (for ``Node(parameters=[..., this])``)."""
    from launch.substitutions import LaunchConfiguration
    return {name: LaunchConfiguration(name) for name in MODEL_ARGUMENTS}
