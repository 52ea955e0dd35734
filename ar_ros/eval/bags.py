"""rosbag2 files (sqlite3 or mcap) read and written with the ``rosbags`` library, no ROS install needed.

Sequences become bags with three topics: ``/camera/image`` (or ``/camera/image/compressed``),
``/base/detections`` (the base tracker) and ``/gt/detections`` (ground truth), stamped from the frame rate.
Bags are written under a temporary name and renamed when complete, so an interrupted run never leaves
a half-written bag under the final name.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..io.cdr import COMPRESSED_TYPE, IMAGE_TYPE, raw_image
from ..progress import progress_bar
from ..errors import ArRosError

Box = Tuple[float, float, float, float]
log = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image"
COMPRESSED_TOPIC = "/camera/image/compressed"
BASE_TOPIC = "/base/detections"
GT_TOPIC = "/gt/detections"
REFINED_TOPIC = "/refined/detections"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"

# vision_msgs 4.x field layouts (Humble..Kilted); registering them gives the same type hashes as the
# real package, so bags interoperate with ros2 bag and rclpy.
VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}


class BagError(ArRosError, ValueError):
    """A bag that cannot be read or written; the message names the file and the problem."""


class BagExists(BagError):
    """The output bag is already there and replacing it was not asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists; pass overwrite=True to replace it")
        self.path = path


@functools.lru_cache(maxsize=1)
def typestore():
    """rosbags typestore for ROS 2 Jazzy plus the vision_msgs types (built once per process)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    store.register(types)
    return store


def _time(store, ns: int):
    return store.types["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def header(store, ns: int, frame_id: str = "camera"):
    return store.types["std_msgs/msg/Header"](stamp=_time(store, ns), frame_id=frame_id)


def detections(store, ns: int, items: Iterable[Tuple[str, Box, float]], frame_id: str = "camera",
               class_id: str = "target"):
    """A Detection2DArray dataclass from (id, xywh box, score) items."""
    T = store.types
    hdr = header(store, ns, frame_id)
    dets = []
    for tid, (x, y, w, h), score in items:
        hyp = T["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=T["vision_msgs/msg/ObjectHypothesis"](class_id=class_id, score=float(score)),
            pose=T["geometry_msgs/msg/PoseWithCovariance"](
                pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                                                 orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0,
                                                                                              w=1.0)),
                covariance=np.zeros(36, np.float64)))
        bbox = T["vision_msgs/msg/BoundingBox2D"](
            center=T["vision_msgs/msg/Pose2D"](position=T["vision_msgs/msg/Point2D"](x=x + w / 2, y=y + h / 2),
                                               theta=0.0), size_x=float(w), size_y=float(h))
        dets.append(T["vision_msgs/msg/Detection2D"](header=hdr, results=[hyp], bbox=bbox, id=str(tid)))
    return T["vision_msgs/msg/Detection2DArray"](header=hdr, detections=dets)


def image(store, ns: int, rgb: np.ndarray, frame_id: str = "camera", encoding: str = "bgr8"):
    arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if encoding == "bgr8" else rgb
    arr = np.ascontiguousarray(arr)
    return store.types[IMAGE_TYPE](header=header(store, ns, frame_id), height=arr.shape[0], width=arr.shape[1],
                                   encoding=encoding, is_bigendian=0, step=arr.strides[0],
                                   data=arr.reshape(-1).view(np.uint8))


def compressed_image(store, ns: int, rgb: np.ndarray, frame_id: str = "camera", quality: int = 90):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise BagError("JPEG encoding failed")
    return store.types[COMPRESSED_TYPE](header=header(store, ns, frame_id), format="bgr8; jpeg compressed bgr8",
                                        data=buf.reshape(-1))


@contextlib.contextmanager
def atomic_bag(path: Union[str, Path], storage: str = "mcap", overwrite: bool = False):
    """A rosbags ``Writer`` on a temporary path, renamed to ``path`` only if the block succeeds.

    The bag is written as ``<hidden partial folder>/<name>``: rosbags names the data file after the bag's
    folder, so the finished bag holds ``<name>.mcap`` (or ``.db3``) as ``ros2 bag record`` would write it.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise BagExists(path)
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}.get(storage)
    if plugin is None:
        raise BagError(f"storage must be 'sqlite3' or 'mcap', got {storage!r}")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with Writer(tmp / path.name, version=9, storage_plugin=plugin) as writer:
            _large_pages(writer)
            yield writer
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _large_pages(writer) -> None:
    """Give a new sqlite3 bag 64 KiB pages: a 900 KB image then spans 15 pages instead of 225, which
    makes writing it about 2.5x cheaper (still a standard SQLite file that rosbag2 reads). Skipped
    silently where the storage is not the sqlite3 connection this expects."""
    import sqlite3
    conn = getattr(getattr(writer, "storage", None), "conn", None)
    if not isinstance(conn, sqlite3.Connection) or conn.in_transaction:
        return
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA page_size=65536")
        conn.execute("VACUUM")  # applies the page size; the database holds only its empty schema here


def write_sequence(path: Union[str, Path], frames: Iterable[np.ndarray], base: Sequence[Optional[Box]],
                   gt: Optional[Sequence[Optional[Box]]] = None, fps: float = 30.0, storage: str = "mcap",
                   compressed: bool = False, target_id: str = "target", start_ns: int = 1_700_000_000 * 10**9,
                   overwrite: bool = False, progress: bool = False) -> Path:
    """Write a sequence (RGB frames + base boxes [+ GT]) as a rosbag2. ``None`` boxes are omitted."""
    store = typestore()
    period = int(round(1e9 / fps))
    with atomic_bag(path, storage, overwrite) as writer, \
            progress_bar(len(base), f"writing {Path(path).name}", enabled=progress) as bar:
        img_conn = writer.add_connection(COMPRESSED_TOPIC if compressed else IMAGE_TOPIC,
                                         COMPRESSED_TYPE if compressed else IMAGE_TYPE, typestore=store)
        base_conn = writer.add_connection(BASE_TOPIC, DETECTIONS_TYPE, typestore=store)
        gt_conn = writer.add_connection(GT_TOPIC, DETECTIONS_TYPE, typestore=store) if gt is not None else None
        for i, rgb in enumerate(frames):
            bar.update(1)
            ns = start_ns + i * period
            msg = compressed_image(store, ns, rgb) if compressed else image(store, ns, rgb)
            writer.write(img_conn, ns, store.serialize_cdr(msg, img_conn.msgtype))
            if gt_conn is not None and gt is not None:  # before the base detections: a streaming reader has
                g = gt[i]                                  # it at pairing time (gt_conn exists exactly with gt)
                items = [(target_id, g, 1.0)] if g is not None and g[2] > 0 and g[3] > 0 else []
                writer.write(gt_conn, ns, store.serialize_cdr(detections(store, ns, items), DETECTIONS_TYPE))
            b = base[i] if i < len(base) else None
            items = [] if b is None else [(target_id, b, 1.0)]
            writer.write(base_conn, ns, store.serialize_cdr(detections(store, ns, items), DETECTIONS_TYPE))
    return Path(path)


def bag_folder(path: Union[str, Path]) -> Path:
    """The bag folder ``path`` names (the folder, or its .mcap/.db3 file); BagError naming the missing file."""
    path = Path(path)
    if path.is_file() and path.suffix in (".mcap", ".db3"):
        path = path.parent
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if not path.is_dir():
        raise BagError(f"{path}: not a rosbag2 folder (nor its .mcap or .db3 file)")
    if not (path / "metadata.yaml").exists() and not any(path.glob("*.mcap")):
        raise BagError(f"{path / 'metadata.yaml'}: no such file (a rosbag2 folder holds metadata.yaml and its "
                       ".mcap or .db3 files; an MCAP recording cut off before it has one is read from its .mcap)")
    return path


def open_reader(path: Union[str, Path]):
    """A rosbags ``Reader`` for a bag directory (or its .mcap/.db3 file), with a clear error on bad input.

    An MCAP recording that was cut off (no footer, no metadata.yaml) is read by scanning its intact
    records, with a warning (:mod:`ar_ros.data.mcap_scan`), as ROS 2's own reader does.
    """
    from rosbags.rosbag2 import Reader
    path = bag_folder(path)
    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises its own ReaderError and a few others for corrupt metadata
        problem = f"{path}: cannot open bag ({type(err).__name__}: {err})"
        return _scan_cut_off_recording(path, problem)
    return reader


def _scan_cut_off_recording(path: Path, problem: str):
    """A recording cut off mid-write (no footer, often no metadata.yaml): read what is intact, as ROS 2 does."""
    from ..data.mcap_scan import ScanError, ScanReader
    files = sorted(path.glob("*.mcap"), key=lambda f: (len(f.name), f.name))  # bag_9 before bag_10
    if not files:
        raise BagError(problem)
    try:
        reader = ScanReader(files)
    except (ScanError, OSError) as err:
        raise BagError(f"{problem}; scanning its MCAP data found nothing readable either: {err}") from None
    count = sum(c.msgcount for c in reader.connections)
    log.warning("%s; read it by scanning instead (%d intact messages%s%s)", problem, count,
                ", file cut off" if reader.truncated else "",
                f", {reader.damaged_chunks} damaged chunks skipped" if reader.damaged_chunks else "")
    return reader


def messages(reader, store, topics: Optional[Sequence[str]] = None, raw_images: bool = False,
             undecodable: Optional[Callable[[Any, int, bytes, str], None]] = None,
             ) -> Iterator[Tuple[Any, int, bytes, Any]]:
    """(connection, log time ns, raw bytes, decoded message) in log-time order.

    With ``raw_images``, image messages come as :class:`RawImage` views of the raw bytes (no
    deserialisation, no pixel copy); everything else is deserialised by rosbags. A message that cannot be
    decoded raises BagError, or, with ``undecodable``, is handed to it as (connection, time, raw bytes,
    reason) and skipped.
    """
    conns = [c for c in reader.connections if topics is None or c.topic in topics]
    for conn, t, raw in reader.messages(connections=conns):
        try:
            if raw_images and conn.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE):
                msg = raw_image(raw, conn.msgtype)
            else:
                msg = store.deserialize_cdr(raw, conn.msgtype)
        except Exception as err:
            reason = f"cannot decode a {conn.msgtype} message on {conn.topic} at t={t}: {type(err).__name__}: {err}"
            if undecodable is None:
                raise BagError(reason) from None
            undecodable(conn, t, raw, reason)
            continue
        yield conn, t, raw, msg


class ThreadedBag:
    """:func:`atomic_bag` run in a writer thread, behind a bounded queue; use it as a context manager.

    File writes release the GIL, so the caller decodes and refines the next frame while the last one
    is written (measured with mcap; sqlite3 binds each blob under the GIL and gains little). At most
    ``maxsize`` writes wait (a full queue blocks the caller: memory stays bounded). Every call on the
    rosbags ``Writer`` runs in that one thread (sqlite3 connections must stay in the thread that made
    them). A failed write is raised in the caller at the next :meth:`write` or at the end, and the bag
    is then not renamed into place.
    """

    def __init__(self, path: Union[str, Path], storage: str = "mcap", overwrite: bool = False,
                 maxsize: int = 16) -> None:
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bag-writer")
        self._slots = threading.BoundedSemaphore(maxsize)
        self._error: Optional[BaseException] = None
        self._bag = atomic_bag(path, storage, overwrite)
        try:
            self._writer = self._call(self._bag.__enter__)
        except BaseException:
            self._pool.shutdown()
            raise

    def _call(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result()

    def add_connection(self, *args, **kwargs):
        return self._call(self._writer.add_connection, *args, **kwargs)

    def _done(self, future) -> None:
        self._slots.release()
        if future.exception() is not None and self._error is None:
            self._error = future.exception()

    def _failure(self) -> Optional[BagError]:
        if self._error is None:
            return None
        return BagError(f"writing the output bag failed: {type(self._error).__name__}: {self._error}")

    def write(self, conn, timestamp: int, raw: bytes) -> None:
        failure = self._failure()
        if failure is not None:
            raise failure
        self._slots.acquire()
        self._pool.submit(self._writer.write, conn, timestamp, raw).add_done_callback(self._done)

    def __enter__(self) -> "ThreadedBag":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc is None:  # the queue runs in order: this waits for every write before it
                self._call(lambda: None)
                failure = self._failure()
                if failure is not None:  # abort: the temporary bag is removed, not renamed
                    with contextlib.suppress(BagError):
                        self._call(self._bag.__exit__, BagError, failure, None)
                    raise failure
                self._call(self._bag.__exit__, None, None, None)
            else:
                with contextlib.suppress(BaseException):  # the block's own error wins
                    self._call(self._bag.__exit__, exc_type, exc, tb)
        finally:
            self._pool.shutdown()
