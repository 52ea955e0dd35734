"""A small base tracker node: OpenCV CSRT/KCF/MIL on the camera image, vision_msgs out.

For users without a tracker of their own: camera -> base_tracker -> ar_ros -> rviz. Targets are set
with the same ``set_target`` service shape as the refiner (``ar_ros/srv/SetTarget``) and keep their id
in every ``Detection2D`` of ``detections``. A lost target repeats its last box with score 0.

Closed loop (``use_feedback: true``; the paper's way of running Alpha-Refine): the node subscribes the
refiner's ``refined/targets`` (``feedback_trusted_only``, the default; else ``refined/detections``) and
re-seeds the tracker of each id with its refined box, so the next frame is tracked from there: with
``refined/targets`` only a trusted box (``engine.quality.trusted``: not a fallback, not kept, not lost, and
with a quality head the base box predicted below ``reseed_below``). The convention, for any tracker that
wants the loop: a refined detection carries the id and the header stamp of the detection it refines; it is
used only when it is for the last frame the tracker tracked (a late one would move the tracker back in time:
counted in ``stale_feedback`` and ignored).
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Image
from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose

from ar_ros.msg import RefinedTargetArray
from ar_ros.srv import ClearTargets, SetTarget

from ..engine.boxes import check_box
from ..engine.quality import trusted
from ..io.detections import bbox_to_xywh, fill_bbox, stamp_to_ns
from ..io.images import ImageError, image_to_rgb
from ..data.opencv_trackers import OPENCV_TRACKERS, OpenCVTracker
from ..options import BY_NAME
from .executor import run_node
from .params import descriptor
from .qos import IMAGE_QOS, OUTPUT_QOS


class BaseTrackerNode(Node):
    def __init__(self, node_name: str = "base_tracker", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.declare_parameter("tracker", "csrt", ParameterDescriptor(
            description=f"OpenCV tracker: {', '.join(OPENCV_TRACKERS)}", read_only=True))
        self.declare_parameter("class_id", "target", ParameterDescriptor(description="class_id in the output"))
        self.declare_parameter("use_feedback", False, ParameterDescriptor(
            description="Closed loop: re-seed each target's tracker with its refined box from feedback_topic",
            read_only=True))
        self.declare_parameter("feedback_topic", "refined/detections", ParameterDescriptor(
            description="The refiner's output (vision_msgs/Detection2DArray) used when use_feedback is true "
                        "and feedback_trusted_only is false", read_only=True))
        self.declare_parameter("feedback_trusted_only", True, ParameterDescriptor(
            description="Closed loop: take the refiner's refined/targets (ar_ros/RefinedTargetArray) instead and "
                        "re-seed only with trusted boxes (not a fallback, not the kept base box, not lost); the "
                        "tracker keeps its own state otherwise", read_only=True))
        reseed = descriptor(BY_NAME["reseed_below"])  # the options table's row: its doc and range
        reseed.description += (" (feedback_trusted_only: refined/targets' base_quality; -1 there, a model without "
                               "a head: every trusted box)")
        self.declare_parameter("reseed_below", BY_NAME["reseed_below"].default, reseed)
        self.declare_parameter("feedback_targets_topic", "refined/targets", ParameterDescriptor(
            description="The refiner's refined/targets, used when use_feedback and feedback_trusted_only are true",
            read_only=True))
        kind = self.get_parameter("tracker").value
        if kind not in OPENCV_TRACKERS:
            raise ValueError(f"tracker must be one of {OPENCV_TRACKERS}, got {kind!r}")
        self.kind = kind
        self.trackers: Dict[str, OpenCVTracker] = {}
        self.last_rgb: Optional[np.ndarray] = None
        self.last_stamp: Optional[int] = None  # ns, of the frame last_rgb is
        self.reseeds = 0          # trackers re-seeded from feedback
        self.stale_feedback = 0   # feedback messages not for the last tracked frame (ignored)
        self._lock = threading.Lock()
        self._next_id = 1
        self.pub = self.create_publisher(Detection2DArray, "detections", OUTPUT_QOS)
        self.create_subscription(Image, "image", self._on_image, IMAGE_QOS)
        if self.get_parameter("use_feedback").value:
            if self.get_parameter("feedback_trusted_only").value:
                self.create_subscription(RefinedTargetArray, self.get_parameter("feedback_targets_topic").value,
                                         self._on_trusted_feedback, OUTPUT_QOS)
            else:
                self.create_subscription(Detection2DArray, self.get_parameter("feedback_topic").value,
                                         self._on_feedback, OUTPUT_QOS)
        self.create_service(SetTarget, "set_target", self._srv_set_target)
        self.create_service(ClearTargets, "clear_targets", self._srv_clear)

    def _on_image(self, msg: Image) -> None:
        try:
            rgb = image_to_rgb(msg)
        except ImageError as err:
            self.get_logger().warning(f"skipping frame: {err}", throttle_duration_sec=5.0)
            return
        out = Detection2DArray(header=msg.header)
        with self._lock:
            self.last_rgb, self.last_stamp = rgb, stamp_to_ns(msg.header.stamp)
            for tid, tracker in self.trackers.items():
                box = tracker.update(rgb)
                det = Detection2D(header=msg.header, id=tid)
                shown = box if box is not None else tracker.last
                assert shown is not None  # every tracker here was initialised: it has a last box
                fill_bbox(det.bbox, shown)
                hyp = ObjectHypothesisWithPose()
                hyp.hypothesis.class_id = self.get_parameter("class_id").value
                hyp.hypothesis.score = 1.0 if box is not None else 0.0
                det.results = [hyp]
                out.detections.append(det)
        self.pub.publish(out)

    def _on_feedback(self, msg: Detection2DArray) -> None:
        self._reseed(msg.header, [(det.id, det.bbox) for det in msg.detections])

    def _on_trusted_feedback(self, msg: RefinedTargetArray) -> None:
        below = self.get_parameter("reseed_below").value
        self._reseed(msg.header, [(t.id, t.refined_box) for t in msg.targets if trusted(t, below)])

    def _reseed(self, header: Any, boxes: List[Tuple[str, BoundingBox2D]]) -> None:
        with self._lock:
            if self.last_rgb is None or stamp_to_ns(header.stamp) != self.last_stamp:
                self.stale_feedback += 1
                self.get_logger().warning("refined detections for a frame other than the last one tracked "
                                          "(late or out of order): not fed back", throttle_duration_sec=5.0)
                return
            height, width = self.last_rgb.shape[:2]
            for tid, bbox in boxes:
                tracker = self.trackers.get(tid)
                if tracker is None:
                    continue
                try:
                    box = check_box(bbox_to_xywh(bbox), width, height)
                except ValueError:
                    continue  # the refiner flags such boxes itself; the tracker keeps its own
                self.reseeds += int(tracker.reseed(self.last_rgb, box))

    def _srv_set_target(self, req: SetTarget.Request, res: SetTarget.Response) -> SetTarget.Response:
        res.success = False
        with self._lock:
            if self.last_rgb is None:
                res.message = "no image received yet"
                return res
            ids = list(req.target_ids) or [""] * len(req.boxes)
            if len(ids) != len(req.boxes) or not req.boxes:
                res.message = "give one box per target id (at least one)"
                return res
            height, width = self.last_rgb.shape[:2]
            new: Dict[str, OpenCVTracker] = {}
            for i, (tid, bbox) in enumerate(zip(ids, req.boxes)):
                try:
                    box = check_box(bbox_to_xywh(bbox), width, height)
                except ValueError as err:
                    res.message = f"box {i}: {err}"
                    return res
                if not tid:
                    tid = f"t{self._next_id}"
                    self._next_id += 1
                tracker = OpenCVTracker(self.kind)
                tracker.init(self.last_rgb, box)
                new[tid] = tracker
                res.refined_boxes.append(fill_bbox(BoundingBox2D(), box))
            self.trackers.update(new)
            res.target_ids = list(self.trackers)
        res.success, res.message = True, f"tracking {len(new)} new target(s) with {self.kind}"
        return res

    def _srv_clear(self, req: ClearTargets.Request, res: ClearTargets.Response) -> ClearTargets.Response:
        with self._lock:
            wanted = list(req.target_ids) or list(self.trackers)
            unknown = [t for t in wanted if t not in self.trackers]
            for tid in wanted:
                self.trackers.pop(tid, None)
            res.target_ids = list(self.trackers)
        res.success = not unknown
        res.message = f"unknown target(s): {unknown}" if unknown else "cleared"
        return res


def main(args: Optional[List[str]] = None) -> None:
    run_node("base_tracker", BaseTrackerNode, args=args)


if __name__ == "__main__":  # python -m ar_ros.ros.base_tracker [--ros-args ...], like `ar-refine base-tracker`
    main()
