"""sensor_msgs/Image and CompressedImage <-> numpy (our small replacement for cv_bridge)."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import cv2
import numpy as np

# encoding -> (dtype, channels)
_LAYOUT = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "8UC1": (np.uint8, 1), "8UC3": (np.uint8, 3), "8UC4": (np.uint8, 4),
    "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1),
    "yuv422": (np.uint8, 2), "uyvy": (np.uint8, 2), "yuv422_yuy2": (np.uint8, 2), "yuyv": (np.uint8, 2),
}
SUPPORTED_ENCODINGS = tuple(_LAYOUT)
_TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB, "8UC3": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB, "8UC4": cv2.COLOR_BGRA2RGB, "mono8": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
    # sensor_msgs "yuv422" is UYVY byte order; "yuv422_yuy2" is YUYV
    "yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV, "yuyv": cv2.COLOR_YUV2RGB_YUYV,
}
_PAIRED = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")  # two pixels share one U, V pair
MAX_PIXELS = 8192 * 8192


class ImageError(ValueError):
    """An image message that cannot be decoded; the message says why."""


def _as_bytes_array(data: Any) -> np.ndarray:
    """uint8 view of message data without a copy (rclpy gives array.array, rosbags numpy, tests bytes)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """Image message -> HxW or HxWxC array with the message's own layout (no colour conversion)."""
    enc = str(msg.encoding)
    if enc not in _LAYOUT:
        raise ImageError(f"unsupported encoding '{enc}' (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    dtype, ch = _LAYOUT[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"empty image ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise ImageError(f"image too large ({w}x{h})")
    if enc in _PAIRED and w % 2:
        raise ImageError(f"{enc} needs an even width (two pixels share one U/V pair), got {w}")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * ch * itemsize
    if step < row_bytes:
        raise ImageError(f"step {step} is smaller than width*channels*bytes = {row_bytes} for {enc} {w}x{h}")
    data = _as_bytes_array(msg.data)
    if data.size < step * h:
        raise ImageError(f"data has {data.size} bytes, expected step*height = {step * h} for {enc} {w}x{h}")
    rows = data[: step * h].reshape(h, step)[:, :row_bytes]
    dt = np.dtype(dtype).newbyteorder(">" if int(msg.is_bigendian) else "<")
    arr = np.ascontiguousarray(rows).view(dt).reshape(h, w, ch)
    if itemsize > 1:
        arr = arr.astype(dtype)  # native byte order
    return arr[..., 0] if ch == 1 else arr


def image_to_rgb(msg: Any) -> np.ndarray:
    """Image message -> HxWx3 uint8 RGB (16-bit mono is scaled to 8 bits)."""
    arr = image_to_array(msg)
    enc = str(msg.encoding)
    if enc == "rgb8":
        return arr
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(arr, _TO_RGB[enc])


def image_to_frame(msg: Any) -> Tuple[np.ndarray, str]:
    """Image message -> (HxWx3 uint8 frame, ``"rgb"`` or ``"bgr"``), skipping the colour conversion of
    bgr8 frames: the refiner takes either order and swaps channels per crop, far cheaper than per frame."""
    if str(msg.encoding) in ("bgr8", "8UC3"):
        return image_to_array(msg), "bgr"
    return image_to_rgb(msg), "rgb"


def rgb_to_bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def array_to_image(arr: np.ndarray, encoding: str, msg_type: Any, header: Optional[Any] = None) -> Any:
    """numpy -> an Image message of class ``msg_type`` (rclpy or rosbags)."""
    arr = np.ascontiguousarray(arr)
    kwargs = dict(height=int(arr.shape[0]), width=int(arr.shape[1]), encoding=encoding, is_bigendian=0,
                  step=int(arr.strides[0]), data=arr.tobytes())
    msg = msg_type(**kwargs) if header is None else msg_type(header=header, **kwargs)
    return msg


def parse_compressed_format(fmt: str) -> Tuple[str, str]:
    """compressed_image_transport format string -> (raw encoding, codec).

    ``"bgr8; jpeg compressed bgr8"`` -> ("bgr8", "jpeg"); bare ``"jpeg"``/``"png"`` -> ("bgr8", codec);
    empty -> ("bgr8", "jpeg") as the message definition says.
    """
    fmt = (fmt or "").strip().lower()
    if not fmt:
        return "bgr8", "jpeg"
    if ";" in fmt:
        raw, rest = (p.strip() for p in fmt.split(";", 1))
        codec = rest.split()[0] if rest else "jpeg"
    else:
        raw, codec = "bgr8", fmt.split()[0]
    codec = {"jpg": "jpeg"}.get(codec, codec)
    if codec not in ("jpeg", "png", "tiff"):
        raise ImageError(f"unknown compressed format '{fmt}'")
    return raw or "bgr8", codec


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """CompressedImage message (jpeg/png) -> HxWx3 uint8 RGB."""
    raw, _codec = parse_compressed_format(str(msg.format))
    buf = _as_bytes_array(msg.data)
    if buf.size == 0:
        raise ImageError("compressed image has no data")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"cannot decode compressed image ({buf.size} bytes, format '{msg.format}'): "
                         "corrupt or truncated")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    # OpenCV decodes colour to BGR; a stream declared rgb8 was encoded from RGB bytes
    return img if raw.startswith("rgb") else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
