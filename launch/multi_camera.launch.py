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
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


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
    return [Node(package="ar_ros", executable="ar_ros", name="ar_ros", output="screen",
                 namespace=LaunchConfiguration("namespace"),
                 parameters=[LaunchConfiguration("params_file"),
                             {"cameras": cams, "device": LaunchConfiguration("device"),
                              "checkpoint": LaunchConfiguration("checkpoint")}],
                 remappings=remaps)]


def generate_launch_description():
    share = get_package_share_directory("ar_ros")
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="front,left", description="comma-separated names"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "ar_ros.yaml")),
        DeclareLaunchArgument("device", default_value="auto"),
        DeclareLaunchArgument("checkpoint", default_value=""),
        OpaqueFunction(function=_node),
    ])
