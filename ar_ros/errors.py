"""The one base of every error ar_ros raises on purpose; each concern defines its own next to its code."""


class ArRosError(Exception):
    """Base class: ``except ArRosError`` catches every error of ours (bad input, missing files, backends)."""
