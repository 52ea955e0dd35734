"""Image and detection message conversions (duck-typed: work on any object with the fields)."""
import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from ar_ros.io.detections import bbox_to_xywh, fill_bbox, stamp_to_ns
from ar_ros.io.images import (ImageError, SUPPORTED_ENCODINGS, check_image, compressed_size, compressed_to_rgb,
                              image_to_rgb, parse_compressed_format)


def msg(arr, encoding, step=None, bigendian=0):
    arr = np.ascontiguousarray(arr)
    return SimpleNamespace(height=arr.shape[0], width=arr.shape[1], encoding=encoding, is_bigendian=bigendian,
                           step=step if step is not None else arr.strides[0], data=arr.tobytes())


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def test_colour_encodings_all_become_rgb(rgb):
    assert np.array_equal(image_to_rgb(msg(rgb, "rgb8")), rgb)
    assert np.array_equal(image_to_rgb(msg(rgb[..., ::-1], "bgr8")), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(image_to_rgb(msg(rgba, "rgba8")), rgb)
    assert np.array_equal(image_to_rgb(msg(rgba[..., [2, 1, 0, 3]], "bgra8")), rgb)
    gray = rgb[..., 0]
    assert np.array_equal(image_to_rgb(msg(gray, "mono8")), np.dstack([gray] * 3))


def test_mono16_both_byte_orders_and_padded_rows(rgb):
    g16 = (rgb[..., 0].astype(np.uint16) << 8) | 0x55
    assert np.array_equal(image_to_rgb(msg(g16, "mono16"))[..., 0], rgb[..., 0])
    assert np.array_equal(image_to_rgb(msg(g16.byteswap(), "16UC1", bigendian=1))[..., 0], rgb[..., 0])
    padded = np.zeros((6, 32), np.uint8)
    padded[:, :24] = rgb.reshape(6, 24)
    assert np.array_equal(image_to_rgb(SimpleNamespace(
        height=6, width=8, encoding="rgb8", is_bigendian=0, step=32, data=padded.tobytes())), rgb)


def test_yuv422_variants(rgb):
    for enc in ("yuv422", "yuv422_yuy2"):
        out = image_to_rgb(SimpleNamespace(height=6, width=8, encoding=enc, is_bigendian=0, step=16,
                                           data=bytes(96)))
        assert out.shape == (6, 8, 3)


@pytest.mark.parametrize("bad, words", [
    (dict(encoding="32FC3"), "unsupported encoding"),
    (dict(step=3), "smaller than"),
    (dict(data=b"\x00" * 10), r"expected step\*height"),
    (dict(height=0), "empty"),
])
def test_bad_images_raise_image_error_with_reason(rgb, bad, words):
    m = msg(rgb, "rgb8")
    for k, v in bad.items():
        setattr(m, k, v)
    with pytest.raises(ImageError, match=words):
        image_to_rgb(m)


def test_yuv422_with_an_odd_width_is_an_image_error():
    with pytest.raises(ImageError, match="even width"):
        image_to_rgb(SimpleNamespace(height=2, width=3, encoding="yuv422", is_bigendian=0, step=6, data=bytes(12)))


def test_mangled_serialised_images_decode_or_raise_value_error():
    # what the node and replay do with every image: parse the CDR bytes in place, then decode
    from rosbags.typesys import Stores, get_typestore
    from ar_ros.io.cdr import IMAGE_TYPE, raw_image
    from ar_ros.io.images import image_to_frame
    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    rng = np.random.default_rng(1)
    outcomes = {"frame": 0, "error": 0}
    for enc, ch, dtype in (("bgr8", 3, np.uint8), ("mono16", 1, np.uint16), ("yuv422", 2, np.uint8),
                           ("rgba8", 4, np.uint8)):
        row = 8 * ch * np.dtype(dtype).itemsize
        image = types[IMAGE_TYPE](
            header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2),
                                                frame_id="cam"),
            height=6, width=8, encoding=enc, is_bigendian=0, step=row,
            data=rng.integers(0, 256, 6 * row, dtype=np.uint8))
        raw = bytes(store.serialize_cdr(image, IMAGE_TYPE))
        for _ in range(400):
            b = bytearray(raw)
            kind = rng.integers(3)
            if kind == 0:  # a few random bytes
                for pos in rng.integers(0, len(b), rng.integers(1, 5)):
                    b[pos] = rng.integers(256)
            elif kind == 1:  # truncated
                b = b[:rng.integers(len(b))]
            else:  # height, width, step or a length field set to an odd value
                pos = int(rng.choice([16, 20, 24, 28, 32, 36, 40]))
                b[pos:pos + 4] = int(rng.choice([0, 1, 3, 7, 2**31, 2**32 - 1, 99])).to_bytes(4, "little")
            try:
                frame, order = image_to_frame(raw_image(bytes(b), IMAGE_TYPE))
            except ValueError:
                outcomes["error"] += 1
                continue
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and order in ("rgb", "bgr")
            outcomes["frame"] += 1
    assert outcomes["frame"] > 100 and outcomes["error"] > 100  # both paths were exercised


def test_supported_encodings_listed():
    for enc in ("bgr8", "rgb8", "mono8", "bgra8", "rgba8"):
        assert enc in SUPPORTED_ENCODINGS


def test_compressed_formats_and_corrupt_data(rgb):
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", big[..., ::-1])
    out = compressed_to_rgb(SimpleNamespace(format="bgr8; png compressed bgr8", data=png.tobytes()))
    assert np.array_equal(out, big)
    ok, jpg = cv2.imencode(".jpg", big[..., ::-1])
    out = compressed_to_rgb(SimpleNamespace(format="jpeg", data=jpg.tobytes()))
    assert out.shape == big.shape and np.abs(out.astype(int) - big).mean() < 40
    assert parse_compressed_format("mono8; png compressed") == ("mono8", "png")
    assert parse_compressed_format("") == ("bgr8", "jpeg")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        compressed_to_rgb(SimpleNamespace(format="jpeg", data=jpg.tobytes()[:50]))
    with pytest.raises(ImageError, match="unknown compressed format"):
        compressed_to_rgb(SimpleNamespace(format="bgr8; webp compressed", data=jpg.tobytes()))


def test_sizes_are_checked_before_anything_is_decoded():
    small = np.zeros((48, 64, 3), np.uint8)
    for ext, flags in ((".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        assert compressed_size(cv2.imencode(ext, small, flags)[1]) == (64, 48)
    # a small file whose header says 10000x10000 is refused before decoding (the raw path's cap)
    jpg = bytearray(cv2.imencode(".jpg", small)[1].tobytes())
    sof = jpg.index(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 10000, 10000)
    png = bytearray(cv2.imencode(".png", small)[1].tobytes())
    png[16:24] = struct.pack(">II", 10000, 10000)
    for data, fmt in ((jpg, "jpeg"), (png, "png")):
        with pytest.raises(ImageError, match="too large"):
            compressed_to_rgb(SimpleNamespace(format=fmt, data=bytes(data)))
    for w, h in ((1, 1), (1, 640), (480, 1)):
        tiny = np.zeros((h, w, 3), np.uint8)
        with pytest.raises(ImageError, match="too small"):
            compressed_to_rgb(SimpleNamespace(format="png", data=cv2.imencode(".png", tiny)[1].tobytes()))
        with pytest.raises(ImageError, match="too small"):
            check_image(msg(tiny, "bgr8"))
    with pytest.raises(ImageError, match="neither PNG nor JPEG"):
        compressed_to_rgb(SimpleNamespace(format="png", data=cv2.imencode(".bmp", small)[1].tobytes()))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        compressed_size(bytes(jpg[:sof + 6]))


def test_bbox_conversions_round_trip():
    bbox = SimpleNamespace(center=SimpleNamespace(position=SimpleNamespace(x=0.0, y=0.0), theta=1.0),
                           size_x=0.0, size_y=0.0)
    fill_bbox(bbox, (10.0, 20.0, 30.0, 40.0))
    assert (bbox.center.position.x, bbox.center.position.y, bbox.center.theta) == (25.0, 40.0, 0.0)
    assert bbox_to_xywh(bbox) == (10.0, 20.0, 30.0, 40.0)
    assert stamp_to_ns(SimpleNamespace(sec=3, nanosec=5)) == 3_000_000_005


def test_compressed_frames_refine_like_the_raw_frame(small_net, frame):
    from ar_ros import Refiner
    box = (200.0, 150.0, 120.0, 90.0)
    results = {}
    for name, ext in (("raw", None), ("png", ".png"), ("jpeg", ".jpg")):
        img = frame
        if ext:
            ok, buf = cv2.imencode(ext, frame[..., ::-1])
            img = compressed_to_rgb(SimpleNamespace(format=f"bgr8; {name} compressed bgr8", data=buf.tobytes()))
        r = Refiner(small_net)
        r.set_target(img, box, "a")
        results[name] = np.array(r.refine(img, {"a": (205.0, 148.0, 118.0, 95.0)})["a"].raw_box)
    assert np.array_equal(results["png"], results["raw"])          # lossless: identical
    assert np.abs(results["jpeg"] - results["raw"]).max() < 3.0    # lossy: close
