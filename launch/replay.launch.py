"""Replay a recorded bag through the refiner on a real ROS install (ros2 bag play --clock + sim time).

    ros2 launch ar_ros replay.launch.py bag:=/data/run1 image_topic:=/camera/color/image_raw \
        detections_topic:=/tracker/detections rate:=1.0

For a deterministic, as-fast-as-possible evaluation without ROS timing use `ar-refine replay BAG`.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ar_ros.ros.launch_args import model_arguments, model_parameters
from ar_ros.ros.rviz import rviz_action


def generate_launch_description():
    share = get_package_share_directory("ar_ros")
    bag = LaunchConfiguration("bag")
    args = [
        DeclareLaunchArgument("bag", description="rosbag2 folder to play"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image", description="the bag's camera topic"),
        DeclareLaunchArgument("detections_topic", default_value="/base/detections",
                              description="the bag's base tracker topic (vision_msgs/Detection2DArray)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="ros2 bag play --rate"),
        *model_arguments(),
    ]
    play = ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--rate", LaunchConfiguration("rate")],
                          output="screen")
    refiner = Node(package="ar_ros", executable="ar_ros", name="ar_ros", output="screen",
                   parameters=[LaunchConfiguration("params_file"),
                               {"use_sim_time": True, **model_parameters()}],
                   remappings=[("image", LaunchConfiguration("image_topic")),
                               ("detections", LaunchConfiguration("detections_topic"))])
    rviz = rviz_action(os.path.join(share, "rviz", "ar_ros.rviz"), LaunchConfiguration("image_topic"),
                       use_sim_time=True, condition=IfCondition(LaunchConfiguration("use_rviz")))
    return LaunchDescription(args + [refiner, play, rviz])
