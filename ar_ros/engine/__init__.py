"""Inference engine: crops, box conventions, masks and the batched :class:`Refiner`."""
from .refiner import Refiner, Result

__all__ = ["Refiner", "Result"]
