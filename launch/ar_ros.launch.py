"""Start the ar_ros refiner next to a camera and a base tracker.

    ros2 launch ar_ros ar_ros.launch.py image_topic:=/camera/color/image_raw \
        detections_topic:=/tracker/detections device:=cuda precision:=fp16 use_rviz:=true

On a CPU-only robot: `ar-refine export onnx model_onnx --int8`, then
    ros2 launch ar_ros ar_ros.launch.py checkpoint:=$PWD/model_onnx backend:=onnxruntime-int8
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ar_ros.ros.launch_args import model_arguments, model_parameters
from ar_ros.ros.rviz import rviz_action


def generate_launch_description():
    share = get_package_share_directory("ar_ros")
    args = [
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw", description="camera image"),
        DeclareLaunchArgument("detections_topic", default_value="/tracker/detections",
                              description="base tracker output (vision_msgs/Detection2DArray)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and outputs"),
        *model_arguments(),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (a bag played --clock)"),
    ]
    refiner = Node(
        package="ar_ros", executable="ar_ros", name="ar_ros", namespace=LaunchConfiguration("namespace"),
        output="screen", emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"),
                    {**model_parameters(), "use_sim_time": LaunchConfiguration("use_sim_time")}],
        remappings=[("image", LaunchConfiguration("image_topic")),
                    ("detections", LaunchConfiguration("detections_topic"))],
    )
    # rviz shows the topics this launch wires up (image_topic, namespace), not the config file's own
    rviz = rviz_action(os.path.join(share, "rviz", "ar_ros.rviz"), LaunchConfiguration("image_topic"),
                       LaunchConfiguration("namespace"), LaunchConfiguration("use_sim_time"),
                       condition=IfCondition(LaunchConfiguration("use_rviz")))
    return LaunchDescription(args + [refiner, rviz])
