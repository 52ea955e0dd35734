"""ar_ros: Alpha-Refine box refinement for any visual tracker, with a ROS 2 node.

The public API is ``from ar_ros import Refiner, Result``. Names resolve lazily so that importing the
package (or its generated ROS interfaces) stays cheap.
"""
# A source checkout and the colcon install (which adds the generated ar_ros.msg / ar_ros.srv) can both
# be on sys.path: let either copy find the other's submodules.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
__all__ = ["Refiner", "Result", "__version__"]


def __getattr__(name):
    if name in ("Refiner", "Result"):
        from .engine import refiner
        return getattr(refiner, name)
    raise AttributeError(f"module 'ar_ros' has no attribute {name!r}")
