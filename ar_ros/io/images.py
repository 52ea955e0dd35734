"""sensor_msgs/Image and CompressedImage <-> numpy (our small replacement for cv_bridge)."""
from __future__ import annotations

import struct
from typing import Any, Optional, Tuple

import cv2
import numpy as np

from ..errors import ArRosError

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
MIN_SIDE = 2  # pixels each way: the refiner crops and resamples around a box; a 1-pixel row or column cannot be
MAX_PIXELS = 8192 * 8192
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (C4 DHT, C8 JPG, CC DAC are not)


class ImageError(ArRosError, ValueError):
    """An image message that cannot be decoded; the message says why."""


def _as_bytes_array(data: Any) -> np.ndarray:
    """uint8 view of message data without a copy (rclpy gives array.array, rosbags numpy, tests bytes)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def check_size(width: int, height: int) -> None:
    """``ImageError`` unless a ``width`` x ``height`` frame can be refined: at least ``MIN_SIDE`` pixels each
    way, at most ``MAX_PIXELS`` in all (what one message may cost to decode is bounded by this)."""
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"image too small to refine ({width}x{height}; at least {MIN_SIDE}x{MIN_SIDE})")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image too large ({width}x{height}; at most {MAX_PIXELS} pixels)")


def check_image(msg: Any) -> None:
    """``ImageError`` unless an Image message decodes to a frame that can be refined. Reads the encoding,
    size, step and data length, never the pixels: cheap enough for every message on arrival."""
    enc = str(msg.encoding)
    if enc not in _LAYOUT:
        raise ImageError(f"unsupported encoding '{enc}' (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    dtype, ch = _LAYOUT[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    check_size(w, h)
    if enc in _PAIRED and w % 2:
        raise ImageError(f"{enc} needs an even width (two pixels share one U/V pair), got {w}")
    row_bytes = w * ch * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageError(f"step {step} is smaller than width*channels*bytes = {row_bytes} for {enc} {w}x{h}")
    size = _as_bytes_array(msg.data).size
    if size < step * h:
        raise ImageError(f"data has {size} bytes, expected step*height = {step * h} for {enc} {w}x{h}")


def image_to_array(msg: Any) -> np.ndarray:
    """Image message -> HxW or HxWxC array with the message's own layout (no colour conversion)."""
    check_image(msg)
    enc = str(msg.encoding)
    dtype, ch = _LAYOUT[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * ch * itemsize
    data = _as_bytes_array(msg.data)
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
    if codec not in ("jpeg", "png"):  # the two whose size compressed_size reads before decoding
        raise ImageError(f"unknown compressed format '{fmt}'")
    return raw or "bgr8", codec


def compressed_size(data: Any) -> Tuple[int, int]:
    """(width, height) of PNG or JPEG data, read from its header (PNG IHDR, JPEG frame header) without
    decoding; ``ImageError`` for other data or a header that cannot be read."""
    view = _as_bytes_array(data).data  # a memoryview of the array; indexing gives ints
    if bytes(view[:8]) == _PNG_SIGNATURE:
        if len(view) < 24 or bytes(view[12:16]) != b"IHDR":
            raise ImageError(f"PNG without its IHDR header ({len(view)} bytes): corrupt or truncated")
        width, height = struct.unpack(">II", view[16:24])
        return width, height
    if bytes(view[:2]) == b"\xff\xd8":
        pos = 2
        # segments up to the frame header: each step skips one whole segment, so a message of n bytes
        # costs at most n / 4 steps
        while pos + 4 <= len(view) and view[pos] == 0xFF:
            marker = view[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
            elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
                pos += 2
            elif marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                break
            elif marker in _JPEG_SOF:
                if pos + 9 > len(view):
                    break
                height, width = struct.unpack(">HH", view[pos + 5:pos + 9])
                return width, height
            else:
                pos += 2 + ((view[pos + 2] << 8) | view[pos + 3])
        raise ImageError(f"JPEG without a readable frame header ({len(view)} bytes): corrupt or truncated")
    raise ImageError(f"compressed data is neither PNG nor JPEG (starts {bytes(view[:8]).hex()})")


def check_compressed(msg: Any) -> None:
    """``ImageError`` unless a CompressedImage message names a known format and its header gives a size
    that can be refined (:func:`check_size`); nothing is decoded."""
    parse_compressed_format(str(msg.format))
    buf = _as_bytes_array(msg.data)
    if buf.size == 0:
        raise ImageError("compressed image has no data")
    check_size(*compressed_size(buf))


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """CompressedImage message (jpeg/png) -> HxWx3 uint8 RGB. The size is checked before decoding."""
    check_compressed(msg)
    raw, _codec = parse_compressed_format(str(msg.format))
    buf = _as_bytes_array(msg.data)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"cannot decode compressed image ({buf.size} bytes, format '{msg.format}'): "
                         "corrupt or truncated")
    if img.dtype == np.uint16:
        img = np.right_shift(img, 8).astype(np.uint8)  # img >> 8 (the stubs' >> excludes float dtypes)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    # OpenCV decodes colour to BGR; a stream declared rgb8 was encoded from RGB bytes
    return img if raw.startswith("rgb") else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
