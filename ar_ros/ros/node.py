"""The ar_ros refiner node: camera image + base tracker detections in, refined detections out.

Callbacks only store messages. A worker thread takes the newest synchronised (image, detections)
pair, refines every target in one batched pass and publishes; when it is busy, older pairs are
skipped (counted), so the output never lags behind the camera.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool
from vision_msgs.msg import (Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose,
                             VisionClass)

from ar_ros.msg import RefinedTarget, RefinedTargetArray
from ar_ros.srv import ClearTargets, SetTarget

from ..draw import draw_targets, label_image
from ..engine.boxes import check_box
from ..io.detections import bbox_to_xywh, fill_bbox, stamp_to_ns
from ..io.images import ImageError, array_to_image, compressed_to_rgb, image_to_rgb, rgb_to_bgr
from . import params as P
from .diagnostics import Counters, Meter, fmt
from .qos import (DETECTIONS_QOS, IMAGE_OUTPUT_QOS, IMAGE_QOS, LATCHED_QOS, OUTPUT_QOS, publisher_events,
                  subscription_events)
from .stamp_cache import StampCache


@dataclass
class CachedImage:
    """A received frame; decoded to RGB on first use only."""

    msg: Any  # sensor_msgs/Image or CompressedImage
    received: float
    _rgb: Optional[np.ndarray] = None
    error: str = ""

    def rgb(self) -> Optional[np.ndarray]:
        if self._rgb is None and not self.error:
            try:
                self._rgb = compressed_to_rgb(self.msg) if isinstance(self.msg, CompressedImage) \
                    else image_to_rgb(self.msg)
            except ImageError as err:
                self.error = str(err)
        return self._rgb


@dataclass
class Job:
    """One unit of work for the refiner thread."""

    image: CachedImage
    detections: Optional[Detection2DArray]
    received: float = field(default_factory=time.monotonic)


class RefinerNode(LifecycleNode):
    """Lifecycle node; with ``autostart`` (default) ``main`` configures and activates it at once."""

    def __init__(self, node_name: str = "ar_ros", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in P.PARAMS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.refiner = None
        self.device_label = ""
        self.active = False
        self.enabled = True
        self.counters = Counters()
        self.meters = {name: Meter() for name in ("image", "detections", "output", "refine_ms", "age_ms")}
        self._cache: StampCache[CachedImage] = StampCache(int(self._p("image_cache_size")))
        self._waiting: List[Tuple[int, Detection2DArray, float]] = []
        self._pending: Optional[Job] = None
        self._cond = threading.Condition()
        self._refiner_lock = threading.Lock()
        self._worker: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.session = None   # RefineSession: target bookkeeping shared with offline replay
        self._next_auto_id = 1
        self._label_ids: Tuple[str, ...] = ()
        self._subs_created = False
        self.det_sub = None
        self._pubs: Dict[str, Any] = {}
        self._diag_timer = None
        self._last_warn: Dict[str, float] = {}

    # ------------------------------------------------------------------ parameters
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        for param in parameters:
            reason = P.validate(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for param in parameters:
            self._apply_live(param.name, param.value)
        return SetParametersResult(successful=True)

    def _apply_live(self, name: str, value: Any) -> None:
        refiner = self.refiner
        if refiner is None:
            return
        if name == "max_targets":
            self.session.max_targets = int(value)
        elif name == "target_timeout":
            self.session.target_timeout_ns = int(float(value) * 1e9)
        elif name == "min_score":
            refiner.min_score = float(value)
        elif name == "max_scale_change":
            refiner.max_scale_change = float(value)
        elif name == "mask_threshold":
            refiner.mask_threshold = float(value)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ..engine.refiner import Refiner  # torch loads here, not at import
        from ..engine.session import RefineSession
        try:
            if self._p("threads"):
                import torch
                torch.set_num_threads(int(self._p("threads")))
            self.refiner = Refiner(self._p("checkpoint") or None, device=self._p("device"),
                                   precision=self._p("precision"), crop_mode=self._p("crop_mode") or None,
                                   search_factor=self._p("search_factor") or None,
                                   min_score=self._p("min_score"), max_scale_change=self._p("max_scale_change"),
                                   mask_threshold=self._p("mask_threshold"), backend=self._p("backend"))
        except (ValueError, KeyError, OSError, RuntimeError) as err:
            self.get_logger().error(f"cannot load the refiner: {err}")
            return TransitionCallbackReturn.FAILURE
        self.session = RefineSession(self.refiner, mode=self._p("mode"), max_targets=self._p("max_targets"),
                                     target_timeout_ns=int(float(self._p("target_timeout")) * 1e9))
        self.device_label = f"{self.refiner.device.type}/{str(self.refiner.dtype).replace('torch.', '')}"
        self._warm_up()
        self._create_endpoints()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="ar_ros_refiner", daemon=True)
        self._worker.start()
        cfg = self.refiner.config
        self.get_logger().info(
            f"refiner ready: ResNet-{cfg.depth}, {cfg.input_size}px crops, crop_mode={self.refiner.crop_mode}, "
            f"device={self.device_label}, mode={self._p('mode')}, source={self.refiner.meta.get('source', '')}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        with self._cond:
            self._pending = None
            self._waiting.clear()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._shutdown_worker()
        self.refiner = self.session = None
        self._cache.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._shutdown_worker()
        return TransitionCallbackReturn.SUCCESS

    def _shutdown_worker(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None

    def destroy_node(self) -> None:
        self._shutdown_worker()
        super().destroy_node()

    def _warm_up(self) -> None:
        """One template + search pass so the first real frame is not slow."""
        frame = np.zeros((64, 64, 3), np.uint8)
        with self._refiner_lock:
            self.refiner.set_target(frame, (16, 16, 32, 32), "__warmup__")
            self.refiner.refine(frame, {"__warmup__": (16, 16, 32, 32)})
            self.refiner.clear("__warmup__")
            self.refiner.passes = 0

    def _create_endpoints(self) -> None:
        if self._subs_created:
            return
        qos_opts = QoSOverridingOptions.with_default_policies()
        # image_transport naming: the compressed stream of `image` is `image/compressed`
        compressed = self._p("image_transport") == "compressed"
        image_topic = "image/compressed" if compressed else "image"
        self.create_subscription(CompressedImage if compressed else Image, image_topic, self._on_image, IMAGE_QOS,
                                 qos_overriding_options=qos_opts, event_callbacks=subscription_events(
                                     self._qos_problem, self.resolve_topic_name(image_topic)))
        self.det_sub = self.create_subscription(
            Detection2DArray, "detections", self._on_detections, DETECTIONS_QOS, qos_overriding_options=qos_opts,
            event_callbacks=subscription_events(self._qos_problem, self.resolve_topic_name("detections")))

        def pub(msg_type, topic, qos):
            return self.create_publisher(msg_type, topic, qos, event_callbacks=publisher_events(
                self._qos_problem, self.resolve_topic_name(topic)))
        self._pubs = {
            "detections": pub(Detection2DArray, "refined/detections", OUTPUT_QOS),
            "targets": pub(RefinedTargetArray, "refined/targets", OUTPUT_QOS),
            "mask": pub(Image, "refined/mask", IMAGE_OUTPUT_QOS),
            "label_info": pub(LabelInfo, "refined/mask/label_info", LATCHED_QOS),
            "overlay": pub(Image, "refined/overlay", IMAGE_OUTPUT_QOS),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        self.create_service(SetTarget, "set_target", self._srv_set_target)
        self.create_service(ClearTargets, "clear_targets", self._srv_clear_targets)
        self.create_service(SetBool, "enable", self._srv_enable)
        self._diag_timer = self.create_timer(float(self._p("diagnostics_period")), self._publish_diagnostics)
        self._subs_created = True

    # ------------------------------------------------------------------ input
    def _on_image(self, msg: Any) -> None:
        self.meters["image"].add()
        self.counters.inc("images_received")
        if not self.active:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        self._cache.put(stamp, CachedImage(msg, time.monotonic()))
        if self._p("mode") == "track" and self.det_sub is not None and self.count_publishers(
                self.resolve_topic_name("detections")) == 0:
            # no base tracker: the previous refined box is the base box, frame by frame
            self._submit(Job(self._cache.get(stamp)[1], None))
        else:
            self._pair()

    def _on_detections(self, msg: Detection2DArray) -> None:
        self.meters["detections"].add()
        self.counters.inc("detections_received")
        if not self.active:
            return
        if not self.enabled:
            self.counters.inc("disabled_skips")
            return
        with self._cond:
            self._waiting.append((stamp_to_ns(msg.header.stamp), msg, time.monotonic()))
            if len(self._waiting) > 10:  # bounded: a base tracker without images must not grow memory
                self._waiting.pop(0)
                self.counters.inc("unsynced")
        self._pair()

    def _pair(self) -> None:
        """Match waiting detections to cached images by stamp; the newest match becomes the job."""
        slop = int(float(self._p("sync_slop")) * 1e9)
        max_age = int(float(self._p("max_image_age")) * 1e9)
        newest_image = self._cache.span()[1]
        with self._cond:
            keep, found = [], None
            for stamp, msg, arrived in self._waiting:
                hit = self._cache.get(stamp, slop)
                if hit is not None:
                    if found is not None:
                        self.counters.inc("skipped_stale")
                    found = Job(hit[1], msg, arrived)
                elif newest_image and newest_image - stamp > max_age:
                    self.counters.inc("stale")
                    self._throttled_warn("stale", f"dropping detections stamped {stamp / 1e9:.3f}: no image "
                                         f"within sync_slop and older than max_image_age")
                else:
                    keep.append((stamp, msg, arrived))
            self._waiting = keep
        if found is not None:
            self._submit(found)

    def _submit(self, job: Job) -> None:
        with self._cond:
            if self._pending is not None:
                self.counters.inc("skipped_stale")
            self._pending = job
            self._cond.notify()

    # ------------------------------------------------------------------ work
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while self._pending is None and not self._stop.is_set():
                    self._cond.wait(timeout=0.5)
                job, self._pending = self._pending, None
            if job is None:
                continue
            try:
                self._process(job)
            except Exception as err:  # never let one bad frame kill the refiner thread
                self.counters.inc("errors")
                self.get_logger().error(f"refinement failed: {type(err).__name__}: {err}")

    def _process(self, job: Job) -> None:
        if self.refiner is None or not self.active:
            return
        rgb = job.image.rgb()
        if rgb is None:
            self.counters.inc("bad_images")
            self._throttled_warn("bad_image", f"skipping frame: {job.image.error}")
            return
        header = job.image.msg.header
        height, width = rgb.shape[:2]
        dets: Dict[str, Detection2D] = {}
        inputs = []
        for det in (job.detections.detections if job.detections is not None else []):
            inputs.append((det.id, bbox_to_xywh(det.bbox)))
            dets.setdefault(det.id, det)
        want_mask = bool(self._p("publish_mask")) and self._pubs["mask"].get_subscription_count() > 0
        t0 = time.perf_counter()
        with self._refiner_lock:
            step = self.session.step(rgb, inputs, stamp_to_ns(header.stamp), mask=want_mask)
        refine_ms = (time.perf_counter() - t0) * 1e3
        self.meters["refine_ms"].add(refine_ms)
        for tid, kind, text in step.skipped:
            self.counters.inc(kind)
            self._throttled_warn(kind, text)
        if any(t.startswith("#") for t in step.results):
            self._throttled_warn("no_id", "detections without an id: each is refined against a template "
                                 "from its own frame (set Detection2D.id to track across frames)")
        by_input_order = {}
        for i, (tid, _) in enumerate(inputs):
            by_input_order[tid or f"#{i}"] = dets.get(tid)
        self._publish(header, rgb, step.results, by_input_order, refine_ms, want_mask, height, width)

    # ------------------------------------------------------------------ output
    def _publish(self, header, rgb: np.ndarray, results: Dict[str, Any], dets: Dict[str, Detection2D],
                 refine_ms: float, with_mask: bool, height: int, width: int) -> None:
        out = Detection2DArray(header=header)
        targets = RefinedTargetArray(header=header, refine_ms=refine_ms)
        ordered = list(results.items())
        for tid, res in ordered:
            if res.fallback:
                self.counters.inc("fallbacks")
            det = Detection2D(header=header, id=tid if not tid.startswith("#") else "")
            fill_bbox(det.bbox, res.box)
            base_det = dets.get(tid)
            hyps = list(base_det.results) if base_det is not None and len(base_det.results) else \
                [ObjectHypothesisWithPose()]
            for hyp in hyps:
                hyp.hypothesis.score = float(res.score)
            det.results = hyps
            out.detections.append(det)
            item = RefinedTarget(id=det.id, score=float(res.score), fallback=bool(res.fallback), reason=res.reason)
            fill_bbox(item.base_box, res.base_box)
            fill_bbox(item.refined_box, res.box)
            targets.targets.append(item)
        self._pubs["detections"].publish(out)
        if self._p("publish_targets"):
            self._pubs["targets"].publish(targets)
        if with_mask:
            masks = [res.mask for _, res in ordered]
            labels = label_image((height, width), masks, [res.score for _, res in ordered],
                                 float(self._p("mask_threshold")), binary=self._p("mask_mode") == "binary")
            self._pubs["mask"].publish(array_to_image(labels, "mono8", Image, header))
            ids = tuple(det.id for det in out.detections)
            if ids != self._label_ids:
                self._label_ids = ids
                info = LabelInfo(header=header, threshold=float(self._p("mask_threshold")))
                info.class_map = [VisionClass(class_id=k + 1, class_name=tid) for k, tid in enumerate(ids)]
                self._pubs["label_info"].publish(info)
        if self._p("publish_overlay") and self._pubs["overlay"].get_subscription_count() > 0:
            drawn = draw_targets(rgb, [(tid, res.base_box, res.box, res.score, res.fallback) for tid, res in ordered],
                                 [res.mask for _, res in ordered] if with_mask else None,
                                 float(self._p("mask_threshold")))
            self._pubs["overlay"].publish(array_to_image(rgb_to_bgr(drawn), "bgr8", Image, header))
        self.meters["output"].add()
        self.counters.inc("frames_refined")
        age_ms = (self.get_clock().now().nanoseconds - stamp_to_ns(header.stamp)) / 1e6
        self.meters["age_ms"].add(age_ms)

    # ------------------------------------------------------------------ services
    def _srv_set_target(self, req: SetTarget.Request, res: SetTarget.Response) -> SetTarget.Response:
        res.success = False
        if self.refiner is None or not self.active:
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
        hit = self._cache.latest() if stamp == 0 else self._cache.get(stamp, int(float(self._p("sync_slop")) * 1e9))
        if hit is None:
            lo, hi = self._cache.span()
            res.message = ("no image received yet" if not len(self._cache) else
                           f"no cached image near stamp {stamp / 1e9:.3f} (cache holds {lo / 1e9:.3f}.."
                           f"{hi / 1e9:.3f})")
            return res
        rgb = hit[1].rgb()
        if rgb is None:
            res.message = f"cached image cannot be decoded: {hit[1].error}"
            return res
        height, width = rgb.shape[:2]
        boxes, next_id = {}, self._next_auto_id
        for i, (tid, bbox) in enumerate(zip(ids, req.boxes)):
            try:
                box = check_box(bbox_to_xywh(bbox), width, height)
            except ValueError as err:
                res.message = f"box {i}: {err}"
                return res
            if not tid:
                while f"t{next_id}" in self._live_ids() or f"t{next_id}" in boxes:
                    next_id += 1
                tid = f"t{next_id}"
            boxes[tid] = box
        with self._refiner_lock:
            try:
                refined = self.session.add_targets(rgb, boxes, stamp_ns=hit[0])
            except ValueError as err:
                res.message = str(err)
                return res
        self._next_auto_id = next_id
        res.refined_boxes = [fill_bbox(type(req.boxes[0])(), refined[tid].box) for tid in boxes]
        res.success = True
        res.message = f"set {len(boxes)} target(s) on the frame stamped {hit[0] / 1e9:.3f}"
        res.target_ids = self._live_ids()
        return res

    def _live_ids(self) -> List[str]:
        return [] if self.session is None else self.session.targets

    def _srv_clear_targets(self, req: ClearTargets.Request, res: ClearTargets.Response) -> ClearTargets.Response:
        if self.refiner is None:
            res.success, res.message = False, "node is not configured"
            return res
        with self._refiner_lock:
            unknown = self.session.clear(list(req.target_ids) or None)
        res.success = not unknown
        res.message = f"unknown target(s): {unknown}" if unknown else "cleared"
        res.target_ids = self._live_ids()
        return res

    def _srv_enable(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        self.enabled = bool(req.data)
        res.success, res.message = True, "refinement enabled" if self.enabled else "refinement disabled"
        return res

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        counts = self.counters.snapshot()
        p50, p95 = self.meters["refine_ms"].percentiles()
        age50, _ = self.meters["age_ms"].percentiles()
        rates = {k: self.meters[k].rate() for k in ("image", "detections", "output")}
        level, message = DiagnosticStatus.OK, "refining"
        if not self.active:
            level, message = DiagnosticStatus.WARN, "inactive"
        elif rates["image"] == 0.0:
            level, message = DiagnosticStatus.WARN, "no images"
        elif rates["output"] == 0.0 and rates["detections"] > 0:
            level, message = DiagnosticStatus.WARN, "detections arrive but nothing is refined"
        elif rates["image"] > 0 and age50 == age50 and age50 > 2000.0 / rates["image"]:
            level, message = DiagnosticStatus.WARN, "output lags the camera"
        values = {"image_hz": fmt(rates["image"]), "detections_hz": fmt(rates["detections"]),
                  "output_hz": fmt(rates["output"]), "refine_ms_p50": fmt(p50), "refine_ms_p95": fmt(p95),
                  "stamp_age_ms_p50": fmt(age50), "targets": str(len(self._live_ids())),
                  "device": self.device_label, "enabled": str(self.enabled)}
        for key in ("images_received", "detections_received", "frames_refined", "skipped_stale", "stale", "unsynced", "bad_images", "invalid_box", "duplicate_id", "fallbacks",
                    "over_max_targets", "errors", "disabled_skips", "qos_incompatible"):
            values[key] = str(counts.get(key, 0))
        status = DiagnosticStatus(level=level, name=f"ar_ros: {self.get_name()}", message=message,
                                  hardware_id=self.device_label)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(msg)

    def _qos_problem(self, text: str) -> None:
        self.counters.inc("qos_incompatible")
        self.get_logger().error(text)

    def _throttled_warn(self, key: str, text: str, period: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.get_logger().warning(text)


def _descriptor(spec: P.Spec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    if spec.low is not None and isinstance(spec.default, float):
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))]
    elif spec.low is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return desc


def main(args: Optional[List[str]] = None) -> None:
    """Entry point: init, (auto)start, spin with a polling loop, shut down cleanly on SIGINT/SIGTERM."""
    rclpy.init(args=args if args is not None else sys.argv)
    node = RefinerNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node.refiner is None:
                code = 1  # the reason is already logged
                return
            node.trigger_activate()
        # spin_once polling rather than spin(): a signal always ends the loop (rcl_wait can miss it)
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.25)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(code)
