"""Inference engine: crops, box conventions, masks and the batched :class:`Refiner`.

``Refiner`` and ``Result`` load lazily, so that ``ar_ros.engine.boxes`` (used by the OpenCV base tracker
node) does not import torch.
"""
__all__ = ["Refiner", "Result"]


def __getattr__(name):
    if name in __all__:
        from . import refiner
        return getattr(refiner, name)
    raise AttributeError(f"module 'ar_ros.engine' has no attribute {name!r}")
