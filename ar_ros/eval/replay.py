"""Offline replay: read a bag, refine every base detection, write a new bag, score against GT.

Deterministic and as fast as the engine allows (no ROS timing involved). Images are paired with base
detections by header stamp, exactly as the node does, and targets are handled by the same
:class:`~ar_ros.engine.session.RefineSession`.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ..draw import draw_targets, label_image, open_video
from ..engine.refiner import Refiner
from ..engine.quality import trusted
from ..engine.session import RefineSession
from ..io.detections import bbox_to_xywh, stamp_to_ns
from ..io.images import ImageError, compressed_to_rgb, image_to_frame
from ..progress import progress_bar
from . import bags
from ..data.base_trackers import LOOPS, TrackerBank
from .metrics import Scores, score

log = logging.getLogger(__name__)
_BUFFER = 64  # frames or detection messages held while waiting for their partner


@dataclass
class ReplayResult:
    """Per-frame boxes (NaN where missing), counts and where the output went."""

    stamps: List[int] = field(default_factory=list)
    base: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    refined: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    gt: List[np.ndarray] = field(default_factory=list)
    frames: int = 0
    refined_frames: int = 0
    unpaired: int = 0
    bad_images: int = 0
    bad_messages: int = 0  # other messages that could not be decoded (skipped, copied as they were)
    fallbacks: int = 0
    kept: int = 0     # boxes output as the base box because it was as good (keep_iou or a quality head)
    lost: int = 0     # boxes of targets a quality head had flagged lost
    reseeds: int = 0  # closed loop: times a base tracker was re-seeded with a refined box
    failed_reseeds: int = 0  # closed loop: refined boxes OpenCV refused to start on (the tracker went on)
    seconds: float = 0.0
    output: Optional[Path] = None

    def boxes(self, which: str, target: Optional[str] = None) -> np.ndarray:
        """(frames, 4) boxes of one target (default: the first id seen) from ``base`` or ``refined``."""
        table = getattr(self, which)
        if not table:
            return np.full((len(self.stamps), 4), np.nan)
        tid = target if target is not None else next(iter(table))
        return np.stack(table[tid]) if table.get(tid) else np.full((len(self.stamps), 4), np.nan)

    def init_frame(self, target: Optional[str] = None) -> int:
        """Index of the target's init frame: the first frame with a base box, where its template is taken."""
        seen = np.flatnonzero(np.isfinite(self.boxes("base", target)).all(axis=1))
        return int(seen[0]) if len(seen) else len(self.stamps)

    def scores(self, target: Optional[str] = None) -> Dict[str, Scores]:
        """OPE scores of base and refined boxes against the GT topic, frames without GT skipped.

        The scoring rule of every ar_ros command (``replay``, ``demo``, ``eval``): the target's init frame
        is not scored, as in the OPE toolkits, since the template is taken from that frame's given box.
        """
        if not self.gt:
            raise ValueError("the bag has no ground truth topic to score against")
        first = self.init_frame(target) + 1
        gt = np.stack(self.gt)[first:]
        return {which: score(self.boxes(which, target)[first:], gt) for which in ("base", "refined")}


def _decode(msg, msgtype: str):
    """(frame, colour order): bgr8 frames go to the refiner as they are, which swaps channels per crop."""
    return (compressed_to_rgb(msg), "rgb") if msgtype == bags.COMPRESSED_TYPE else image_to_frame(msg)


def replay(bag: Union[str, Path], refiner: Refiner, out: Union[str, Path, None] = None,
           image_topic: Optional[str] = None, detections_topic: str = bags.BASE_TOPIC,
           gt_topic: str = bags.GT_TOPIC, mask: bool = False, storage: str = "mcap",
           mode: str = "refine", max_targets: int = 8, video: Union[str, Path, None] = None,
           progress: bool = True, overwrite: bool = False, video_fps: float = 15.0,
           base_tracker: Optional[str] = None, loop: str = "open") -> ReplayResult:
    """Refine a bag. With ``out``, writes all its topics plus ``/refined/detections`` (and ``/refined/mask``).

    The base boxes are the recorded detections, which are fixed, so closed loop needs ``base_tracker``
    (an OpenCV tracker run on the bag's images, started from each id's first recorded box, see
    :class:`~.base_trackers.TrackerBank`); ``loop="closed"`` re-seeds it with the refined box every frame.

    The output storage defaults to mcap (ROS 2's default since Iron, and here the cheapest to write:
    ``benchmarks/bench_replay.py --storage``); ``storage="sqlite3"`` is available.
    """
    store = bags.typestore()
    reader = bags.open_reader(bag)
    result = ReplayResult()
    try:
        image_conns = [c for c in reader.connections if c.msgtype in (bags.IMAGE_TYPE, bags.COMPRESSED_TYPE)
                       and (image_topic is None or c.topic == image_topic)]
        if not image_conns:
            raise bags.BagError(f"{bag}: no image topic" + (f" named {image_topic}" if image_topic else "") +
                                f"; topics: {sorted(c.topic for c in reader.connections)}")
        image_conn = sorted(image_conns, key=lambda c: c.msgtype != bags.IMAGE_TYPE)[0]
        topics = {c.topic for c in reader.connections}
        if detections_topic not in topics:
            raise bags.BagError(f"{bag}: no detections topic {detections_topic}; topics: {sorted(topics)}")
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
        if loop == "closed" and base_tracker is None:
            raise ValueError("closed loop feeds the refined box back into the base tracker, but a bag's recorded "
                             "detections are fixed: pass a base tracker to run on the bag's images (--base csrt, "
                             "kcf or mil), started from each id's first recorded box")
        bank = TrackerBank(base_tracker, loop) if base_tracker is not None else None
        session = RefineSession(refiner, mode=mode, max_targets=max_targets)
        total = image_conn.msgcount
        bar = progress_bar(total, f"replay {Path(bag).name}", enabled=progress)
        video_writer = None
        t0 = time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:  # the output bag is renamed into place only on success
                writer = stack.enter_context(bags.ThreadedBag(out, storage, overwrite)) \
                    if out else None
                out_conns = {}
                if writer is not None:
                    for c in reader.connections:
                        out_conns[c.id] = _copy_connection(writer, c, store)
                    refined_conn = writer.add_connection(bags.REFINED_TOPIC, bags.DETECTIONS_TYPE, typestore=store)
                    mask_conn = writer.add_connection("/refined/mask", bags.IMAGE_TYPE, typestore=store) \
                        if mask else None
                images: "OrderedDict[int, tuple]" = OrderedDict()
                dets: "OrderedDict[int, object]" = OrderedDict()
                gts: Dict[int, object] = {}
                def undecodable(conn, t: int, raw: bytes, reason: str) -> None:
                    if writer is not None:
                        writer.write(out_conns[conn.id], t, raw)  # the output keeps every input message
                    if conn.id == image_conn.id:
                        result.frames += 1
                        result.bad_images += 1
                        bar.update(1)
                    else:
                        result.bad_messages += 1
                    if result.bad_images + result.bad_messages <= 3:
                        log.warning("%s: skipped: %s", bag, reason)

                for conn, t, raw, msg in bags.messages(reader, store, raw_images=True, undecodable=undecodable):
                    if writer is not None:
                        writer.write(out_conns[conn.id], t, raw)
                    if conn.topic == gt_topic:
                        gts[stamp_to_ns(msg.header.stamp)] = msg
                        continue
                    if conn.id == image_conn.id:
                        stamp = stamp_to_ns(msg.header.stamp)
                        images[stamp] = (t, msg)
                        result.frames += 1
                        bar.update(1)
                        while len(images) > _BUFFER:
                            images.popitem(last=False)
                    elif conn.topic == detections_topic:
                        stamp = stamp_to_ns(msg.header.stamp)
                        dets[stamp] = msg
                        while len(dets) > _BUFFER:
                            dets.popitem(last=False)
                            result.unpaired += 1
                    else:
                        continue
                    if stamp not in images or stamp not in dets:
                        continue
                    log_t, img_msg = images.pop(stamp)
                    frame = _process(session, img_msg, dets.pop(stamp), image_conn.msgtype, stamp, result, mask,
                                     bank)
                    if frame is None:
                        continue
                    image, color, step = frame
                    if writer is not None:
                        writer.write(refined_conn, log_t, store.serialize_cdr(
                            _refined_msg(store, img_msg.header, step.results), bags.DETECTIONS_TYPE))
                        if mask_conn is not None:
                            ordered = list(step.results.values())
                            labels = label_image(image.shape[:2], [r.mask for r in ordered],
                                                 [r.score for r in ordered])
                            writer.write(mask_conn, log_t, store.serialize_cdr(
                                bags.image(store, stamp, labels, img_msg.header.frame_id, encoding="mono8"),
                                bags.IMAGE_TYPE))
                    if video is not None:
                        rgb = image if color == "rgb" else np.ascontiguousarray(image[..., ::-1])
                        video_writer = _video_frame(video_writer, video, video_fps, rgb, step,
                                                    _gt_box(gts.get(stamp)))
                result.unpaired += len(dets)
                if gts:
                    result.gt = [_gt_box(gts.get(s)) for s in result.stamps]
                result.seconds = time.perf_counter() - t0
            result.output = Path(out) if out else None
        finally:
            bar.close()
            if video_writer is not None:
                video_writer.release()
        _pad(result)
        return result
    finally:
        reader.close()


def _copy_connection(writer, conn, store):
    try:
        return writer.add_connection(conn.topic, conn.msgtype, typestore=store,
                                     offered_qos_profiles=conn.ext.offered_qos_profiles)
    except Exception:  # a type our store does not know: copy its definition from the bag
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest,
                                     offered_qos_profiles=conn.ext.offered_qos_profiles)


def _process(session: RefineSession, img_msg, det_msg, msgtype: str, stamp: int, result: ReplayResult, mask: bool,
             bank: Optional[TrackerBank] = None):
    try:
        image, color = _decode(img_msg, msgtype)
    except ImageError:
        result.bad_images += 1
        return None
    inputs = [(d.id, bbox_to_xywh(d.bbox)) for d in det_msg.detections]
    if bank is not None:
        rgb = image if color == "rgb" else np.ascontiguousarray(image[..., ::-1])  # OpenCVTracker takes RGB
        inputs = bank.boxes(rgb, inputs)
    step = session.step(image, inputs, stamp, mask=mask, color=color)
    if bank is not None:
        below = session.refiner.reseed_below
        bank.feedback(rgb, {tid: res.box for tid, res in step.results.items() if trusted(res, below)})
        result.reseeds, result.failed_reseeds = bank.reseeds, bank.failed_reseeds
    index = len(result.stamps)
    result.stamps.append(stamp)
    result.refined_frames += 1
    for i, (tid, box) in enumerate(inputs):
        key = tid or f"#{i}"
        result.base.setdefault(key, [np.full(4, np.nan)] * index).append(np.asarray(box, np.float64))
    for tid, res in step.results.items():
        result.refined.setdefault(tid, [np.full(4, np.nan)] * index).append(np.asarray(res.box, np.float64))
        result.fallbacks += int(res.fallback)
        result.kept += int(res.kept)
        result.lost += int(res.lost)
    _pad(result)
    return image, color, step


def _pad(result: ReplayResult) -> None:
    n = len(result.stamps)
    for table in (result.base, result.refined):
        for boxes in table.values():
            boxes.extend([np.full(4, np.nan)] * (n - len(boxes)))


def _gt_box(msg) -> np.ndarray:
    if msg is None or not msg.detections:
        return np.zeros(4)  # absent (LaSOT convention)
    return np.asarray(bbox_to_xywh(msg.detections[0].bbox), np.float64)


def _refined_msg(store, header, results):
    items = [(tid if not tid.startswith("#") else "", res.box, res.score) for tid, res in results.items()]
    msg = bags.detections(store, stamp_to_ns(header.stamp), items, header.frame_id)
    return msg


def _video_frame(writer, path, fps: float, rgb: np.ndarray, step, gt: np.ndarray):
    import cv2
    drawn = draw_targets(rgb, [(t, r.base_box, r.box, r.score, r.fallback) for t, r in step.results.items()],
                         [r.mask for r in step.results.values()] if any(r.mask is not None for r in
                                                                         step.results.values()) else None,
                         gt=gt if gt[2] > 0 else None)
    if writer is None:
        writer = open_video(path, fps, (rgb.shape[1], rgb.shape[0]))
    writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    return writer
