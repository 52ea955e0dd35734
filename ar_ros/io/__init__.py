"""Converters between ROS message layouts and numpy, without importing rclpy.

They read fields by name, so they work on rclpy messages and on rosbags' dataclasses alike.
"""
