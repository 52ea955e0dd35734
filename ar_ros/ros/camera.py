"""One camera's side of the refiner node: topics, services, image cache, pairing, publishing, statistics.

The single-camera node has one :class:`Camera` with no name (topics ``image``, ``refined/...``); the
multi-camera node has one per name in ``cameras`` (topics ``<cam>/image``, ``<cam>/refined/...``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import (BoundingBox2D, Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose,
                             VisionClass)

from ar_ros.msg import RefinedTarget, RefinedTargetArray
from ar_ros.srv import ClearTargets, SetTarget

from ..draw import draw_targets, label_image
from ..engine.boxes import check_box
from ..io.cdr import COMPRESSED_TYPE, IMAGE_TYPE, RawImage, raw_image
from ..io.detections import bbox_to_xywh, fill_bbox, stamp_to_ns
from ..io.images import (ImageError, array_to_image, check_compressed, check_image, compressed_to_rgb, image_to_frame,
                         rgb_to_bgr)
from .diagnostics import Counters, Meter, fmt
from .qos import (DETECTIONS_QOS, IMAGE_OUTPUT_QOS, IMAGE_QOS, LATCHED_QOS, OUTPUT_QOS, SERVICE_QOS, publisher_events,
                  subscription_events)
from .pairing import Event, Job, Outcome, Pairing
from .stamp_cache import StampCache

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.session import RefineSession
    from .node import RefinerNode

@dataclass
class CachedImage:
    """A received frame; decoded on first use only, bgr8 kept in its own channel order (no conversion)."""

    msg: RawImage  # parsed from the serialised Image or CompressedImage (no pixel copy)
    received: float
    compressed: bool = False
    _frame: Optional[np.ndarray] = None
    color: str = "rgb"  # channel order of frame()
    error: str = ""
    paired: bool = False  # handed to the worker once (the nearest-stamp fallback never reuses it)

    def frame(self) -> Optional[np.ndarray]:
        """HxWx3 uint8 in the order ``self.color``, or ``None`` (then ``error`` says why)."""
        if self._frame is None and not self.error:
            try:
                if self.compressed:
                    self._frame, self.color = compressed_to_rgb(self.msg), "rgb"
                else:
                    self._frame, self.color = image_to_frame(self.msg)
            except ImageError as err:
                self.error = str(err)
        return self._frame

    def header(self) -> Header:
        """The image's header as a std_msgs/Header (outputs carry it unchanged)."""
        h = self.msg.header
        return Header(stamp=Time(sec=h.stamp.sec, nanosec=h.stamp.nanosec), frame_id=h.frame_id)

    def rgb(self) -> Optional[np.ndarray]:
        """The frame in RGB order (for drawing), or ``None``."""
        frame = self.frame()
        if frame is None or self.color == "rgb":
            return frame
        return np.ascontiguousarray(frame[..., ::-1])


class Camera:
    def __init__(self, node: "RefinerNode", name: str = "") -> None:
        self.node, self.name = node, name
        self.prefix = f"{name}/" if name else ""
        self.cache: StampCache[CachedImage] = StampCache(int(node.param("image_cache_size")))
        self.pairing: Pairing[CachedImage] = Pairing(self.cache)  # called under the node's lock
        self.pending: Optional[Job] = None  # the node's: the next job of this camera for its worker
        self.session: Optional[RefineSession] = None  # the node's: set on configure, None when unconfigured
        self.counters = Counters()
        self.meters = {k: Meter() for k in ("image", "detections", "output", "refine_ms", "age_ms")}
        self.pubs: Dict[str, Any] = {}
        self.det_topic = ""
        self.compressed = False
        self._label_ids: Tuple[str, ...] = ()
        self._next_auto_id = 1

    # ------------------------------------------------------------------ endpoints
    def create_endpoints(self) -> None:
        node, p = self.node, self.prefix
        qos_opts = QoSOverridingOptions.with_default_policies()
        # image_transport naming: the compressed stream of `image` is `image/compressed`
        self.compressed = node.param("image_transport") == "compressed"
        image_topic = p + ("image/compressed" if self.compressed else "image")
        # raw=True: the callback gets the serialised message, parsed by io.cdr without copying the
        # pixels; rclpy's deserialise + C -> Python conversion of a 900 KB frame is skipped
        node.create_subscription(CompressedImage if self.compressed else Image, image_topic, self.on_image,
                                 IMAGE_QOS, raw=True, qos_overriding_options=qos_opts,
                                 event_callbacks=subscription_events(self.qos_problem,
                                                                     node.resolve_topic_name(image_topic)))
        self.det_topic = node.resolve_topic_name(p + "detections")
        # raw=True here too: a message that does not deserialise is counted (rclpy would drop it unseen)
        node.create_subscription(Detection2DArray, p + "detections", self.on_serialised_detections, DETECTIONS_QOS,
                                 raw=True, qos_overriding_options=qos_opts,
                                 event_callbacks=subscription_events(self.qos_problem, self.det_topic))

        def pub(msg_type, topic, qos):
            return node.create_publisher(msg_type, p + topic, qos, event_callbacks=publisher_events(
                self.qos_problem, node.resolve_topic_name(p + topic)))
        self.pubs = {
            "detections": pub(Detection2DArray, "refined/detections", OUTPUT_QOS),
            "targets": pub(RefinedTargetArray, "refined/targets", OUTPUT_QOS),
            "mask": pub(Image, "refined/mask", IMAGE_OUTPUT_QOS),
            "label_info": pub(LabelInfo, "refined/mask/label_info", LATCHED_QOS),
            "overlay": pub(Image, "refined/overlay", IMAGE_OUTPUT_QOS),
        }
        node.create_service(SetTarget, p + "set_target", self.srv_set_target, qos_profile=SERVICE_QOS)
        node.create_service(ClearTargets, p + "clear_targets", self.srv_clear_targets, qos_profile=SERVICE_QOS)

    # ------------------------------------------------------------------ input
    def on_image(self, serialised: bytes) -> None:
        self.meters["image"].add()
        self.counters.inc("images_received")
        if not self.node.active:
            return
        try:
            msg = raw_image(serialised, COMPRESSED_TYPE if self.compressed else IMAGE_TYPE)
            # headers only, no pixels: a frame too small or too large to refine (a 1x1 frame, a small
            # PNG of 10000x10000) is refused here, so it never reaches the cache or the worker's pass
            (check_compressed if self.compressed else check_image)(msg)
        except ValueError as err:  # nothing to pair it with
            self.counters.inc("bad_images")
            self.warn("bad_image", f"dropping an image: {err}")
            return
        stamp = stamp_to_ns(msg.header.stamp)
        entry = CachedImage(msg, time.monotonic(), compressed=self.compressed)
        self.cache.put(stamp, entry)
        with self.node.cond:
            out = self.pairing.image(stamp, entry, self.node.pairing_settings())
        self.take(out)

    def on_serialised_detections(self, serialised: bytes) -> None:
        try:
            msg = deserialize_message(serialised, Detection2DArray)
        except RuntimeError as err:  # rclpy's RMWError: not a Detection2DArray
            self.counters.inc("detections_received")
            self.counters.inc("bad_detections")
            self.warn("bad_detections", f"dropping a detections message that cannot be deserialised: {err}")
            return
        self.on_detections(msg)

    def on_detections(self, msg: Detection2DArray) -> None:
        self.meters["detections"].add()
        self.counters.inc("detections_received")
        if not self.node.active:
            return
        if not self.node.enabled:
            self.counters.inc("disabled_skips")
            return
        with self.node.cond:
            out = self.pairing.detections(stamp_to_ns(msg.header.stamp), msg, time.monotonic(),
                                          self.node.pairing_settings())
        self.take(out)

    def take(self, out: Outcome) -> None:
        """Record a pairing outcome's counters and warnings and hand its jobs to the worker (which is woken
        to wait for the outcome's deadline as well)."""
        self.record(out.events)
        for job in out.jobs:
            self.submit(job)
        if out.due is not None and not out.jobs:
            with self.node.cond:
                self.node.cond.notify()  # the worker sleeps until the earliest deadline

    def poll(self, settings: Any) -> Outcome:
        """The worker's call (under the node's lock): what waited and is due now; events recorded, jobs not
        submitted (the worker queues them itself)."""
        out = self.pairing.pair(time.monotonic(), settings)
        self.record(out.events)
        return out

    def record(self, events: List[Event]) -> None:
        for event in events:
            self.counters.inc(event.counter)
            if event.warning:
                self.warn(event.warning, event.text)

    def submit(self, job: Job) -> None:
        """Hand ``job`` to the worker (unless refinement is disabled)."""
        if not self.node.enabled:
            self.counters.inc("disabled_skips")
            return
        self.node.submit(self, job)

    def inputs(self, job: Job) -> Tuple[List[Tuple[str, Tuple[float, float, float, float]]], Dict[str, Any]]:
        """(id, box) inputs of a job and the base Detection2D per output key (anonymous = ``#i``)."""
        inputs: List[Tuple[str, Tuple[float, float, float, float]]] = []
        dets: Dict[str, Any] = {}
        for i, det in enumerate(job.detections.detections if job.detections is not None else []):
            inputs.append((det.id, bbox_to_xywh(det.bbox)))
            dets.setdefault(det.id or f"#{i}", det)
        return inputs, dets

    # ------------------------------------------------------------------ output
    def wants_mask(self) -> bool:
        return bool(self.node.param("publish_mask")) and self.pubs["mask"].get_subscription_count() > 0

    def publish(self, image: CachedImage, results: Dict[str, Any], dets: Dict[str, Detection2D],
                refine_ms: float, with_mask: bool) -> None:
        node = self.node
        header = image.header()
        frame = image.frame()
        assert frame is not None  # published after its pass: decoded
        height, width = frame.shape[:2]
        out = Detection2DArray(header=header)
        # refined/targets is built only for subscribers (diagnostic tools); most deployments have none
        targets = RefinedTargetArray(header=header, refine_ms=refine_ms) \
            if node.param("publish_targets") and self.pubs["targets"].get_subscription_count() > 0 else None
        ordered = list(results.items())
        for tid, res in ordered:
            for flag, counter in ((res.fallback, "fallbacks"), (res.kept, "base_kept"), (res.lost, "lost")):
                if flag:
                    self.counters.inc(counter)
            det = Detection2D(header=header, id=tid if not tid.startswith("#") else "")
            base_det = dets.get(tid)
            if (res.fallback or res.kept) and base_det is not None:
                det.bbox = copy.deepcopy(base_det.bbox)  # the base box as it came, bit for bit (even +inf)
            else:
                fill_bbox(det.bbox, res.box)
            hyps = list(base_det.results) if base_det is not None and len(base_det.results) else \
                [ObjectHypothesisWithPose()]
            for hyp in hyps:
                hyp.hypothesis.score = float(res.score)
            det.results = hyps
            out.detections.append(det)
            if targets is not None:
                item = RefinedTarget(id=det.id, score=float(res.score), fallback=bool(res.fallback),
                                     reason=res.reason, kept=bool(res.kept), lost=bool(res.lost),
                                     base_quality=-1.0 if res.base_quality is None else float(res.base_quality))
                fill_bbox(item.base_box, res.base_box)
                fill_bbox(item.refined_box, res.box)
                targets.targets.append(item)
        self.pubs["detections"].publish(out)
        if targets is not None:
            self.pubs["targets"].publish(targets)
        threshold = float(node.param("mask_threshold"))
        if with_mask:  # a box passed through unrefined has no mask: no pixel takes its value
            labels = label_image((height, width), [res.mask for _, res in ordered], [res.score for _, res in ordered],
                                 threshold, binary=node.param("mask_mode") == "binary")
            self.pubs["mask"].publish(array_to_image(labels, "mono8", Image, header))
            ids = tuple(det.id for det in out.detections)
            if ids != self._label_ids:
                self._label_ids = ids
                info = LabelInfo(header=header, threshold=threshold)
                info.class_map = [VisionClass(class_id=k + 1, class_name=tid) for k, tid in enumerate(ids)]
                self.pubs["label_info"].publish(info)
        if node.param("publish_overlay") and self.pubs["overlay"].get_subscription_count() > 0:
            rgb = image.rgb()
            assert rgb is not None  # decoded (frame() above)
            drawn = draw_targets(rgb, [(tid, res.base_box, res.box, res.score,
                                                "LOST" if res.lost else res.fallback) for tid, res in ordered],
                                 [res.mask for _, res in ordered] if with_mask else None, threshold)
            self.pubs["overlay"].publish(array_to_image(rgb_to_bgr(drawn), "bgr8", Image, header))
        self.meters["output"].add()
        self.meters["refine_ms"].add(refine_ms)
        self.counters.inc("frames_refined")
        self.meters["age_ms"].add((node.get_clock().now().nanoseconds - stamp_to_ns(header.stamp)) / 1e6)

    # ------------------------------------------------------------------ services
    def live_ids(self) -> List[str]:
        return [] if self.session is None else self.session.targets

    def srv_set_target(self, req: SetTarget.Request, res: SetTarget.Response) -> SetTarget.Response:
        res.success = False
        node = self.node
        if node.refiner is None or self.session is None or not node.active:  # session: set with the refiner
            res.message = "node is not active"
            return res
        n = len(req.boxes)
        if n == 0:
            res.message = "no boxes given"
            return res
        ids = list(req.target_ids)
        if ids and len(ids) != n:
            res.message = f"{len(ids)} target_ids for {n} boxes: give one id per box (empty id = auto)"
            return res
        ids = ids or [""] * n
        stamp = stamp_to_ns(req.header.stamp)
        hit = self.cache.latest() if stamp == 0 else self.cache.get(stamp, int(float(node.param("sync_slop")) * 1e9))
        if hit is None:
            lo, hi = self.cache.span()
            res.message = ("no image received yet" if not len(self.cache) else
                           f"no cached image near stamp {stamp / 1e9:.3f} (cache holds {lo / 1e9:.3f}.."
                           f"{hi / 1e9:.3f})")
            return res
        frame = hit[1].frame()
        if frame is None:
            res.message = f"cached image cannot be decoded: {hit[1].error}"
            return res
        height, width = frame.shape[:2]
        boxes, next_id = {}, self._next_auto_id
        for i, (tid, bbox) in enumerate(zip(ids, req.boxes)):
            try:
                box = check_box(bbox_to_xywh(bbox), width, height)
            except ValueError as err:
                res.message = f"box {i}: {err}"
                return res
            if not tid:
                while f"t{next_id}" in self.live_ids() or f"t{next_id}" in boxes:
                    next_id += 1
                tid = f"t{next_id}"
            boxes[tid] = box
        with node.refiner_lock:
            try:
                refined = self.session.add_targets(frame, boxes, stamp_ns=hit[0], color=hit[1].color)
            except ValueError as err:
                res.message = str(err)
                return res
        self._next_auto_id = next_id
        res.refined_boxes = [fill_bbox(BoundingBox2D(), refined[tid].box) for tid in boxes]
        res.success = True
        res.message = f"set {len(boxes)} target(s) on the frame stamped {hit[0] / 1e9:.3f}"
        res.target_ids = self.live_ids()
        return res

    def srv_clear_targets(self, req: ClearTargets.Request, res: ClearTargets.Response) -> ClearTargets.Response:
        if self.session is None:
            res.success, res.message = False, "node is not configured"
            return res
        with self.node.refiner_lock:
            unknown = self.session.clear(list(req.target_ids) or None)
        res.success = not unknown
        res.message = f"unknown target(s): {unknown}" if unknown else "cleared"
        res.target_ids = self.live_ids()
        return res

    # ------------------------------------------------------------------ diagnostics and logging
    COUNTERS = ("images_received", "detections_received", "frames_refined", "paired_exact", "paired_waited",
                "paired_nearest", "unmatched", "no_detections", "skipped_stale", "stale", "unsynced",
                "bad_images", "bad_detections", "invalid_box", "duplicate_id", "fallbacks", "base_kept", "lost",
                "over_max_targets",
                "batch_full", "errors", "disabled_skips", "qos_incompatible")

    def status(self, title: str, extra: Dict[str, str]) -> DiagnosticStatus:
        node = self.node
        counts = self.counters.snapshot()
        p50, p95 = self.meters["refine_ms"].percentiles()
        age50, _ = self.meters["age_ms"].percentiles()
        rates = {k: self.meters[k].rate() for k in ("image", "detections", "output")}
        level, message = DiagnosticStatus.OK, "refining"
        if not node.active:
            level, message = DiagnosticStatus.WARN, "inactive"
        elif rates["image"] == 0.0:
            level, message = DiagnosticStatus.WARN, "no images"
        elif rates["output"] == 0.0 and rates["detections"] > 0:
            level, message = DiagnosticStatus.WARN, "detections arrive but nothing is refined"
        elif rates["image"] > 0 and age50 == age50 and age50 > 2000.0 / rates["image"]:
            level, message = DiagnosticStatus.WARN, "output lags the camera"
        values = {"image_hz": fmt(rates["image"]), "detections_hz": fmt(rates["detections"]),
                  "output_hz": fmt(rates["output"]), "refine_ms_p50": fmt(p50), "refine_ms_p95": fmt(p95),
                  "stamp_age_ms_p50": fmt(age50), "targets": str(len(self.live_ids())), **extra}
        for key in self.COUNTERS:
            values[key] = str(counts.get(key, 0))
        status = DiagnosticStatus(level=level, name=title, message=message, hardware_id=node.device_label)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def qos_problem(self, text: str) -> None:
        self.counters.inc("qos_incompatible")
        self.node.get_logger().error(text)

    def warn(self, key: str, text: str) -> None:
        self.node.throttled_warn(f"{self.name}:{key}", f"[{self.name}] {text}" if self.name else text)
