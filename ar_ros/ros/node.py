"""The ar_ros refiner node: camera image + base tracker detections in, refined detections out.

Callbacks only store messages. A worker thread takes the newest synchronised (image, detections)
pair of every camera, refines all their targets in ONE batched forward pass and publishes; when it is
busy, older pairs are skipped (counted), so the output never lags behind the cameras.

With the ``cameras`` parameter empty (default) the node serves one camera on ``image`` /
``detections``; with ``cameras: [front, left]`` it serves ``front/image``, ``left/image``, ... with one
model, targets keyed by (camera, id).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool

from . import params as P
from .batch_pass import BatchPass
from .camera import Camera
from .pairing import Job, Settings
from .diagnostics import fmt
from .executor import run_node
from .qos import SERVICE_QOS

if TYPE_CHECKING:  # pragma: no cover
    from rclpy.publisher import Publisher

    from ..engine.refiner import Refiner  # imported on configure (torch), not at node import


class RefinerNode(LifecycleNode):
    """Lifecycle node; with ``autostart`` (default) ``main`` configures and activates it at once."""

    def __init__(self, node_name: str = "ar_ros", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._worker: Optional[threading.Thread] = None  # first: shutdown paths may run if __init__ raises
        self._stop = threading.Event()
        for spec in P.PARAMS:
            default = Parameter.Type.STRING_ARRAY if spec.default is None else spec.default
            self.declare_parameter(spec.name, default, P.descriptor(spec))
        # values given at start (-p, params file) skip the set-parameters callback: same checks here
        problem = next(filter(None, (P.validate(s.name, self.get_parameter(s.name).value)
                                     for s in P.PARAMS if s.default is not None)), "")
        if problem:
            raise ValueError(problem)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.refiner: Optional[Refiner] = None  # loaded on configure, dropped on cleanup
        self.device_label = ""
        self.active = False
        self.enabled = True
        self.cond = threading.Condition()
        self._worker_idle = False
        self._picked_up = threading.Event()
        self.refiner_lock = threading.Lock()
        try:
            names = list(self.get_parameter("cameras").value or [])
        except ParameterUninitializedException:  # not set: a single-camera node
            names = []
        problem = P.validate("cameras", names)
        if problem:
            raise ValueError(problem)
        self.cameras: List[Camera] = [Camera(self, n) for n in names] or [Camera(self, "")]
        self.batch = BatchPass(self._failed)  # one forward pass over all cameras, and its meters
        self._endpoints = False
        self._diag_pub: Optional[Publisher] = None  # created on the first configure, with its timer
        self._last_warn: Dict[str, float] = {}

    @property
    def camera(self) -> Camera:
        """The (first) camera: the only one of a single-camera node."""
        return self.cameras[0]

    @property
    def session(self):
        return self.camera.session

    # ------------------------------------------------------------------ parameters
    def param(self, name: str) -> Any:
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
        """A live parameter applied to the refiner and the sessions, under the refiner lock (a pass reads them)."""
        refiner, spec = self.refiner, P.BY_NAME.get(name)
        if refiner is None or spec is None or spec.read_only:
            return
        with self.refiner_lock:
            for cam in self.cameras:
                assert cam.session is not None  # configured with the refiner
                if name == "max_targets":
                    cam.session.max_targets = int(value)
                elif name == "target_timeout":
                    cam.session.target_timeout_ns = int(float(value) * 1e9)
            if spec.refiner:  # the Refiner's attribute of the same name and type
                setattr(refiner, name, type(spec.default)(value))

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from ..backends.factory import refusal, resolve_device  # torch loads here
        from ..engine.refiner import Refiner
        from ..engine.session import RefineSession
        try:
            if self.param("threads"):
                import torch
                torch.set_num_threads(int(self.param("threads")))
            cuda_graphs = bool(self.param("cuda_graphs"))
            problem = refusal("", self.param("backend"), resolve_device(self.param("device")), cuda_graphs) \
                if cuda_graphs else ""
            if problem.startswith("cuda_graphs"):
                self.get_logger().warning(f"{problem}: cuda_graphs ignored")
                cuda_graphs = False
            names = [p.name for p in P.PARAMS if p.refiner and p.name not in ("checkpoint", "crop_mode", "search_factor")]
            self.refiner = Refiner(self.param("checkpoint") or None, crop_mode=self.param("crop_mode") or None,
                                   search_factor=self.param("search_factor") or None,
                                   **{**{n: self.param(n) for n in names}, "cuda_graphs": cuda_graphs})
        except (ValueError, KeyError, OSError, RuntimeError) as err:
            self.get_logger().error(f"cannot load the refiner: {err}")
            return TransitionCallbackReturn.FAILURE
        multi = len(self.cameras) > 1 or bool(self.camera.name)
        for cam in self.cameras:
            cam.session = RefineSession(self.refiner, mode=self.param("mode"), max_targets=self.param("max_targets"),
                                        target_timeout_ns=int(float(self.param("target_timeout")) * 1e9),
                                        namespace=cam.name if multi else None)
        self.device_label = f"{self.refiner.device.type}/{self.refiner.runner.precision}"
        self.get_logger().info(f"precision {self.refiner.precision_note}")  # what auto chose, and why
        self._warm_up()
        if not self._endpoints:
            for cam in self.cameras:
                cam.create_endpoints()
            self.create_service(SetBool, "enable", self._srv_enable, qos_profile=SERVICE_QOS)
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(float(self.param("diagnostics_period")), self._publish_diagnostics)
            self._endpoints = True
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="ar_ros_refiner", daemon=True)
        self._worker.start()
        cfg = self.refiner.config
        cams = ", ".join(c.name for c in self.cameras) if multi else "single camera"
        self.get_logger().info(
            f"refiner ready: {cfg.backbone_title}, {cfg.input_size}px crops, crop_mode={self.refiner.crop_mode}, "
            f"backend={self.refiner.backend}, device={self.device_label}, mode={self.param('mode')}, {cams}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        with self.cond:
            for cam in self.cameras:
                cam.pending = None
                cam.pairing.reset()
        try:
            import torch
            if torch.cuda.is_available():
                with self.refiner_lock:  # never while a pass (or a CUDA graph capture in warm-up) runs
                    torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._shutdown_worker()
        self.refiner = None
        for cam in self.cameras:
            cam.session = None
            cam.cache.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._shutdown_worker()
        return TransitionCallbackReturn.SUCCESS

    def _shutdown_worker(self) -> None:
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        if self.refiner is not None:
            self.refiner.close()

    def destroy_node(self) -> None:
        self._shutdown_worker()
        super().destroy_node()

    def _warm_up(self) -> None:
        """The refiner's warm-up (with CPU graphs: one graph per batch size up to max_targets, built now) so
        that no frame pays for it."""
        with self.refiner_lock:
            assert self.refiner is not None  # on_configure calls this once the refiner is loaded
            self.refiner.warm_up(int(self.param("max_targets")))

    # ------------------------------------------------------------------ work
    def pairing_settings(self) -> Settings:
        """The live parameters pairing reads, read once per pairing call."""
        return Settings(sync_wait=float(self.param("sync_wait")),
                        sync_slop_ns=int(float(self.param("sync_slop")) * 1e9),
                        max_image_age_ns=int(float(self.param("max_image_age")) * 1e9),
                        track=self.param("mode") == "track",
                        detections_timeout=float(self.param("detections_timeout")))

    @staticmethod
    def _enqueue(camera: Camera, job: Job) -> None:
        """Make ``job`` the camera's next work item, replacing (and counting) an unprocessed older one.
        The caller holds ``cond``."""
        if camera.pending is not None:
            camera.counters.inc("skipped_stale")
        camera.pending = job

    def submit(self, camera: Camera, job: Job) -> None:
        """Queue ``job`` for the worker and hand it over at once if the worker is idle."""
        with self.cond:
            self._enqueue(camera, job)
            idle = self._worker_idle and threading.current_thread() is not self._worker
            if idle:
                self._picked_up.clear()
            self.cond.notify()
        if idle:
            # Hand over now: waiting here releases the GIL, so the idle worker starts at once instead of
            # when this thread next blocks (Python switches threads only every 5 ms otherwise). Bounded.
            self._picked_up.wait(timeout=0.002)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self.cond:
                self._worker_idle = True
                while not self._stop.is_set():
                    # detections waiting for their image (and track-mode frames for their detections)
                    # time out here: each camera says when its next wait ends
                    settings, due = self.pairing_settings(), []
                    for cam in self.cameras:
                        out = cam.poll(settings)
                        due += [out.due] if out.due is not None else []
                        for job in out.jobs:
                            if self.enabled:
                                self._enqueue(cam, job)
                            else:
                                cam.counters.inc("disabled_skips")
                    if any(c.pending for c in self.cameras):
                        break
                    self.cond.wait(timeout=min([0.5] + [max(d, 0.001) for d in due]))
                self._worker_idle = False
                jobs = [(c, c.pending) for c in self.cameras if c.pending is not None]
                for cam, _ in jobs:
                    cam.pending = None
            self._picked_up.set()
            if not jobs:
                continue
            try:
                self._process(jobs)
            except Exception as err:  # never let one bad frame kill the refiner thread
                self._failed([cam for cam, _ in jobs], err)

    def _failed(self, cameras: List[Camera], err: Exception) -> None:
        """Count and log a failed refinement, unless the node is shutting down: then publishing into the
        finished context fails (RCLError: context is invalid), which is expected and not reported."""
        if self._stop.is_set() or not self.context.ok():
            return
        for cam in cameras:
            cam.counters.inc("errors")
        names = f" [{', '.join(c.name for c in cameras)}]" if any(c.name for c in cameras) else ""
        self.get_logger().error(f"refinement failed{names}: {type(err).__name__}: {err}", throttle_duration_sec=5.0)

    def _process(self, jobs: List[Tuple[Camera, Job]]) -> None:
        """One batched pass over the cameras' frames (see :mod:`.batch_pass`), while configured and active."""
        if self.refiner is None or not self.active:
            return
        self.batch.run(self.refiner, self.refiner_lock, jobs, int(self.param("max_targets")))

    # ------------------------------------------------------------------ services and diagnostics
    def _srv_enable(self, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        self.enabled = bool(req.data)
        res.success, res.message = True, "refinement enabled" if self.enabled else "refinement disabled"
        return res

    def _publish_diagnostics(self) -> None:
        shared = {"device": self.device_label, "enabled": str(self.enabled),
                  "batch_size_p50": fmt(self.batch.batch_meter.percentiles()[0]),
                  "pass_ms_p50": fmt(self.batch.pass_meter.percentiles()[0]),
                  "pass_ms_p95": fmt(self.batch.pass_meter.percentiles()[1]),
                  "passes": str(self.refiner.passes if self.refiner is not None else 0)}
        base = f"ar_ros: {self.get_name()}"
        if len(self.cameras) == 1 and not self.camera.name:
            statuses = [self.camera.status(base, shared)]
        else:
            statuses = [cam.status(f"{base}/{cam.name}", {}) for cam in self.cameras]
            batch = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{base} batch", message="shared model",
                                     hardware_id=self.device_label)
            batch.values = [KeyValue(key=k, value=v) for k, v in shared.items()]
            statuses.append(batch)
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
        assert self._diag_pub is not None  # created before the timer that calls this
        try:
            self._diag_pub.publish(msg)
        except Exception:  # noqa: BLE001  rclpy's RCLError moved between distros
            if self.context.ok():
                raise
            # SIGINT shut the context down while this timer ran: nothing to report any more

    def throttled_warn(self, key: str, text: str, period: float = 5.0) -> None:
        if not self.context.ok():  # shutting down: a log line would only add 'rosout: context is invalid'
            return
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= period:
            self._last_warn[key] = now
            self.get_logger().warning(text)


def main(args: Optional[List[str]] = None) -> None:
    """Entry point: init, (auto)start, spin until SIGINT/SIGTERM; exits 1 when the model cannot be loaded."""
    run_node("ar_ros", RefinerNode, _autostart, args)


def _autostart(node: RefinerNode) -> bool:
    """With ``autostart``, configure and activate; False when configuring failed (the reason is logged)."""
    if not node.get_parameter("autostart").value:
        return True
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS or node.refiner is None:
        return False
    node.trigger_activate()
    return True


if __name__ == "__main__":  # python -m ar_ros.ros.node [--ros-args ...], like `ar-refine node`
    main()
