"""One refiner for several cameras (one copy of the weights, one batched pass for all their targets).

    ros2 launch ar_ros multi_camera.launch.py cameras:=front,left \
        front_image:=/cam_front/image_raw front_detections:=/trk_front/detections \
        left_image:=/cam_left/image_raw left_detections:=/trk_left/detections

Without per-camera topic arguments the node listens on <cam>/image and <cam>/detections.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ar_ros.ros.launch_args import model_arguments, model_parameters
from ar_ros.ros.rviz import rviz_action


def _node(context, *args, **kwargs):
    raw = [c.strip() for c in LaunchConfiguration("cameras").perform(context).split(",")]
    cams = [c for c in raw if c]
    if len(cams) != len(raw) or len(set(cams)) != len(cams):
        raise RuntimeError(f"cameras must be unique, non-empty names, got {raw}")
    unknown = sorted(k for k in context.launch_configurations
                     if k.endswith(("_image", "_detections")) and k.rsplit("_", 1)[0] not in cams)
    if unknown:
        raise RuntimeError(f"topic arguments {unknown} name no camera in cameras:={','.join(cams)}")
    remaps = []
    for cam in cams:
        for kind in ("image", "detections"):
            key = f"{cam}_{kind}"
            value = context.launch_configurations.get(key)
            if value:
                remaps.append((f"{cam}/{kind}", value))
    namespace = LaunchConfiguration("namespace").perform(context)
    first = cams[0]  # rviz shows the first camera: its image and its refined/overlay, refined/mask
    rviz = rviz_action(os.path.join(get_package_share_directory("ar_ros"), "rviz", "ar_ros.rviz"),
                       context.launch_configurations.get(f"{first}_image") or "image",
                       f"{namespace.strip('/')}/{first}".strip("/"),
                       condition=IfCondition(LaunchConfiguration("use_rviz")))
    return [Node(package="ar_ros", executable="ar_ros", name="ar_ros", output="screen",
                 namespace=LaunchConfiguration("namespace"),
                 parameters=[LaunchConfiguration("params_file"), {"cameras": cams, **model_parameters()}],
                 remappings=remaps), rviz]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="front,left", description="comma-separated names"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and outputs"),
        *model_arguments(rviz="also start rviz on the first camera's image and outputs"),
        OpaqueFunction(function=_node),
    ])
