"""The demo chain on a real ROS install: bag camera -> base_tracker (OpenCV) -> ar_ros -> rviz.

    ar-refine make-bag /tmp/ar_demo.bag --base jitter      # a synthetic sample, once
    ros2 launch ar_ros demo.launch.py bag:=/tmp/ar_demo.bag
    ros2 service call /base_tracker/set_target ar_ros/srv/SetTarget "{boxes: [...]}"   # or use the bag's boxes

With ``use_base_tracker:=false`` (default) the bag's own /base/detections feed the refiner; with true,
the OpenCV base tracker runs on the images and is initialised through its set_target service.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

from ar_ros.ros.rviz import rviz_action


def generate_launch_description():
    share = get_package_share_directory("ar_ros")
    use_base = LaunchConfiguration("use_base_tracker")
    args = [
        DeclareLaunchArgument("bag", description="a bag from `ar-refine make-bag`"),
        DeclareLaunchArgument("use_base_tracker", default_value="false",
                              description="true: the OpenCV base tracker runs on the images; false: the bag's boxes"),
        DeclareLaunchArgument("tracker", default_value="csrt", description="csrt | kcf | mil"),
        DeclareLaunchArgument("use_rviz", default_value="true", description="also start rviz on the outputs"),
    ]
    play = ExecuteProcess(cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--loop"],
                          output="screen")
    base = Node(package="ar_ros", executable="base_tracker", name="base_tracker", namespace="base_tracker",
                parameters=[{"tracker": LaunchConfiguration("tracker"), "use_sim_time": True}],
                remappings=[("image", "/camera/image"), ("detections", "/base_tracker/detections")],
                condition=IfCondition(use_base))
    refiner = Node(package="ar_ros", executable="ar_ros", name="ar_ros", output="screen",
                   parameters=[os.path.join(share, "config", "ar_ros.yaml"), {"use_sim_time": True}],
                   remappings=[("image", "/camera/image"),
                               ("detections", PythonExpression(["'/base_tracker/detections' if '", use_base,
                                                                "' == 'true' else '/base/detections'"]))])
    rviz = rviz_action(os.path.join(share, "rviz", "ar_ros.rviz"), "/camera/image", use_sim_time=True,
                       condition=IfCondition(LaunchConfiguration("use_rviz")))
    return LaunchDescription(args + [play, base, refiner, rviz])
