"""The network and its checkpoints. Knows nothing about frames, boxes in pixels of a frame, or ROS."""
from .checkpoint import CheckpointError, load_network, load_checkpoint, save_checkpoint
from .network import AUTHORS_CONFIG, AlphaRefineNet, NetConfig

__all__ = ["AlphaRefineNet", "NetConfig", "AUTHORS_CONFIG", "CheckpointError",
           "load_checkpoint", "load_network", "save_checkpoint"]
