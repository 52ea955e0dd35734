"""rosbag2 helpers: zero-copy image parsing from CDR and the threaded, atomic output bag."""
import numpy as np
import pytest

from ar_ros.eval import bags
from ar_ros.io.images import ImageError, compressed_to_rgb, image_to_frame, image_to_rgb


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)  # odd sizes: no alignment luck


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("frame_id", ["camera", "", "cam_long_name"])
def test_raw_image_equals_deserialised(rgb, little_endian, frame_id):
    store = bags.typestore()
    ns = 1_700_000_123_456_789_012
    msg = bags.image(store, ns, rgb, frame_id)
    raw = store.serialize_cdr(msg, bags.IMAGE_TYPE, little_endian=little_endian)
    parsed = bags.raw_image(raw, bags.IMAGE_TYPE)
    ref = store.deserialize_cdr(raw, bags.IMAGE_TYPE)
    assert (parsed.header.stamp.sec, parsed.header.stamp.nanosec) == (ref.header.stamp.sec, ref.header.stamp.nanosec)
    assert parsed.header.frame_id == frame_id
    assert (parsed.height, parsed.width, parsed.encoding, parsed.step) == (37, 53, "bgr8", 53 * 3)
    assert np.array_equal(image_to_rgb(parsed), rgb)
    frame, color = image_to_frame(parsed)
    assert color == "bgr" and np.array_equal(frame[..., ::-1], rgb)


def test_raw_compressed_image_equals_deserialised(rgb):
    store = bags.typestore()
    raw = store.serialize_cdr(bags.compressed_image(store, 5, rgb), bags.COMPRESSED_TYPE)
    parsed = bags.raw_image(raw, bags.COMPRESSED_TYPE)
    ref = store.deserialize_cdr(raw, bags.COMPRESSED_TYPE)
    assert parsed.format == ref.format and bytes(parsed.data) == bytes(ref.data)
    assert np.array_equal(compressed_to_rgb(parsed), compressed_to_rgb(ref))


def test_raw_image_refuses_garbage(rgb):
    store = bags.typestore()
    raw = store.serialize_cdr(bags.image(store, 5, rgb), bags.IMAGE_TYPE)
    with pytest.raises(ValueError, match="runs past the end"):
        bags.raw_image(raw[:-10], bags.IMAGE_TYPE)
    for cut in (5, 9, 30, 60):  # truncated anywhere in the header fields
        with pytest.raises(ValueError, match="runs past the end"):
            bags.raw_image(raw[:cut], bags.IMAGE_TYPE)
    with pytest.raises(ValueError, match="encapsulation"):
        bags.raw_image(b"\x07\x07" + raw[2:], bags.IMAGE_TYPE)
    short = bags.image(store, 5, rgb)
    short.height = 40  # more rows than the data holds: the image decoder says so
    with pytest.raises(ImageError, match="expected step"):
        image_to_rgb(bags.raw_image(store.serialize_cdr(short, bags.IMAGE_TYPE), bags.IMAGE_TYPE))


def _write(bag, n):
    store = bags.typestore()
    conn = bag.add_connection(bags.BASE_TOPIC, bags.DETECTIONS_TYPE, typestore=store)
    for i in range(n):
        bag.write(conn, i, store.serialize_cdr(bags.detections(store, i, [("a", (1, 2, 3, 4), 1.0)]),
                                               bags.DETECTIONS_TYPE))
    return conn


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_threaded_bag_writes_everything_in_order(tmp_path, storage):
    with bags.ThreadedBag(tmp_path / "out", storage, maxsize=2) as bag:
        _write(bag, 50)
    reader = bags.open_reader(tmp_path / "out")
    try:
        stamps = [t for _, t, _, _ in bags.messages(reader, bags.typestore())]
    finally:
        reader.close()
    assert stamps == list(range(50))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_threaded_bag_failed_write_raises_and_leaves_no_bag(tmp_path):
    with pytest.raises(bags.BagError, match="writing the output bag failed"):
        with bags.ThreadedBag(tmp_path / "out") as bag:
            conn = _write(bag, 3)
            bag.write(None, 4, b"")  # not a connection of this bag: the writer thread fails
            for i in range(5, 20):
                bag.write(conn, i, b"\x00\x01\x00\x00")
    assert list(tmp_path.iterdir()) == []


def test_threaded_bag_error_in_block_leaves_no_bag(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with bags.ThreadedBag(tmp_path / "out") as bag:
            _write(bag, 3)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(bags.BagError, match="exists"):
        (tmp_path / "exists").mkdir()
        bags.ThreadedBag(tmp_path / "exists")


def test_progress_bar_shows_rate_and_count_or_stays_silent(capsys):
    from ar_ros.progress import progress_bar
    with progress_bar(3, "replay x", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    with progress_bar(3, "replay x") as bar:
        bar.update(3)
    err = capsys.readouterr().err
    assert "replay x" in err and "3/3" in err and "frame/s" in err
