"""Zero-copy parsing of serialised sensor_msgs/Image and CompressedImage messages (CDR).

A 640x480 bgr8 frame is 900 KB. Deserialising it into a message object (rosbags, or rclpy's C -> Python
conversion) copies it and builds objects the refiner never needs. Offline replay parses bag records
with :func:`raw_image`, and the node takes images from DDS as serialised bytes and does the same.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"


@dataclass
class Stamp:
    sec: int
    nanosec: int


@dataclass
class Header:
    stamp: Stamp
    frame_id: str


@dataclass
class RawImage:
    """An Image or CompressedImage read straight from its CDR bytes; ``data`` is a view, not a copy.

    Has the attributes :func:`ar_ros.io.images.image_to_rgb` and ``compressed_to_rgb`` read, so it
    decodes like a deserialised message, without building one (a 640x480 frame is 900 KB).
    """

    header: Header
    data: memoryview
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    format: str = ""


class _Cdr:
    """A cursor over one CDR-encoded message (XCDR1, either byte order, alignment from byte 4)."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) < 4 or raw[0] != 0 or raw[1] not in (0, 1):
            raise ValueError("not a CDR message (bad encapsulation header)")
        self.raw, self.pos = memoryview(raw), 4
        self.u32 = struct.Struct("<I" if raw[1] == 1 else ">I")

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.raw):
            raise ValueError(f"a field of {n} bytes runs past the end of the {len(self.raw)}-byte message")

    def uint32(self) -> int:
        self.pos += -(self.pos - 4) % 4
        self._need(4)
        (value,) = self.u32.unpack_from(self.raw, self.pos)
        self.pos += 4
        return value

    def uint8(self) -> int:
        self._need(1)
        value = self.raw[self.pos]
        self.pos += 1
        return value

    def bytes(self) -> memoryview:
        n = self.uint32()
        self._need(n)
        view = self.raw[self.pos:self.pos + n]
        self.pos += n
        return view

    def string(self) -> str:
        return bytes(self.bytes()).rstrip(b"\0").decode("utf-8", "replace")

    def header(self) -> Header:
        sec, nanosec = self.uint32(), self.uint32()
        return Header(Stamp(sec - (1 << 32) if sec >= 1 << 31 else sec, nanosec), self.string())


def raw_image(raw: bytes, msgtype: str) -> RawImage:
    """Parse a serialised ``sensor_msgs/Image`` (or, with ``msgtype`` naming CompressedImage,
    ``sensor_msgs/CompressedImage``) without copying its pixels. Malformed bytes raise ``ValueError``."""
    cdr = _Cdr(raw)
    header = cdr.header()
    if msgtype == COMPRESSED_TYPE:
        fmt = cdr.string()
        return RawImage(header=header, format=fmt, data=cdr.bytes())
    height, width, encoding = cdr.uint32(), cdr.uint32(), cdr.string()
    is_bigendian, step = cdr.uint8(), cdr.uint32()
    return RawImage(header=header, height=height, width=width, encoding=encoding, is_bigendian=is_bigendian,
                    step=step, data=cdr.bytes())
