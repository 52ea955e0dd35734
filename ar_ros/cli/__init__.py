"""``ar-refine``: a thin command line over the library (one module per group of commands)."""
from .common import EXIT_SKIPPED, MASK_HEAD_CHOICES
from .main import main
from .parser import build_parser

__all__ = ["EXIT_SKIPPED", "MASK_HEAD_CHOICES", "build_parser", "main"]
