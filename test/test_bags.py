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
    # the data file is named after the bag, as ros2 bag record names it (not a hidden temporary name)
    suffix = {"sqlite3": ".db3", "mcap": ".mcap"}[storage]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.yaml", "out" + suffix]


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


def _cut_off_recording(tmp_path, n=24):
    """A bag of n 240x320 frames in several MCAP chunks, then 'killed': no metadata.yaml, file cut at 60%."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(n)]
    boxes = [(100.0 + i, 80.0, 60.0, 50.0) for i in range(n)]
    bag = bags.write_sequence(tmp_path / "rec", frames, boxes, boxes, fps=10)
    data = bag / "rec.mcap"
    full = data.read_bytes()
    (bag / "metadata.yaml").unlink()
    data.write_bytes(full[:len(full) * 6 // 10])
    return bag, boxes, full


def _stamps(reader, topic):
    return [t for c, t, _ in reader.messages() if c.topic == topic]


def test_a_cut_off_mcap_recording_is_read_up_to_where_it_ends(tmp_path, caplog):
    bag, boxes, _ = _cut_off_recording(tmp_path)
    with caplog.at_level("WARNING"):
        reader = bags.open_reader(bag)
    assert "read it by scanning" in caplog.text and "file cut off" in caplog.text
    images = _stamps(reader, bags.IMAGE_TOPIC)
    period = 100_000_000
    assert 0 < len(images) < len(boxes)
    assert images == [1_700_000_000 * 10**9 + i * period for i in range(len(images))]  # a prefix, in order
    conn = next(c for c in reader.connections if c.topic == bags.IMAGE_TOPIC)
    assert conn.msgcount == len(images) and conn.msgtype == bags.IMAGE_TYPE
    # the messages are the recorded ones, byte for byte: decode the base detections
    store = bags.typestore()
    first = next(m for c, _, _, m in bags.messages(reader, store) if c.topic == bags.BASE_TOPIC)
    assert first.detections[0].bbox.size_x == 60.0


def _rechunk(full: bytes, chunk_fn):
    """The MCAP file with each chunk record replaced by chunk_fn(chunk header, its records, n) -> bytes."""
    import struct
    out, pos, n = bytearray(full[:8]), 8, 0
    while pos + 9 <= len(full):
        op, (length,) = full[pos], struct.unpack_from("<Q", full, pos + 1)
        record = full[pos:pos + 9 + length]
        if op == 0x06:
            body = record[9:]
            (clen,) = struct.unpack_from("<I", body, 28)
            (rlen,) = struct.unpack_from("<Q", body, 32 + clen)
            record = chunk_fn(body[:28], body[40 + clen:40 + clen + rlen], n)
            n += 1
        out += record
        pos += 9 + length
    return bytes(out), n


def test_zstd_lz4_and_unchunked_files_are_read_and_a_damaged_chunk_is_skipped(tmp_path):
    import struct
    import lz4.frame
    from ar_ros.data.mcap_scan import ScanReader
    try:
        from compression import zstd
    except ImportError:
        from backports import zstd
    _, _, full = _cut_off_recording(tmp_path)
    (tmp_path / "full.mcap").write_bytes(full)
    everything = _stamps(ScanReader(tmp_path / "full.mcap"), bags.IMAGE_TOPIC)
    assert len(everything) == 24

    def recompress(head, records, n):  # alternate codecs; break the third chunk's stream
        codec = ("zstd", "lz4")[n % 2]
        packed = zstd.compress(records) if codec == "zstd" else lz4.frame.compress(records)
        if n == 2:
            packed = packed[:len(packed) // 2]
        body = head + struct.pack("<I", len(codec)) + codec.encode() + struct.pack("<Q", len(packed)) + packed
        return b"\x06" + struct.pack("<Q", len(body)) + body

    data, chunks = _rechunk(full, recompress)
    assert chunks >= 4
    (tmp_path / "z.mcap").write_bytes(data)
    reader = ScanReader(tmp_path / "z.mcap")
    assert reader.damaged_chunks == 1 and not reader.truncated
    got = _stamps(reader, bags.IMAGE_TOPIC)
    assert 0 < len(got) < 24 and set(got) < set(everything)
    # records written straight into the data section, without chunks (rosbag2's 'fastwrite' preset)
    (tmp_path / "flat.mcap").write_bytes(_rechunk(full, lambda head, records, n: records)[0])
    assert _stamps(ScanReader(tmp_path / "flat.mcap"), bags.IMAGE_TOPIC) == everything


def test_a_file_that_is_not_mcap_or_has_no_complete_chunk_is_a_bag_error(tmp_path):
    bag = tmp_path / "junk"
    bag.mkdir()
    (bag / "junk.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x01" + (9).to_bytes(8, "little"))  # ends at once
    with pytest.raises(bags.BagError, match="found nothing readable"):
        bags.open_reader(bag)
    (bag / "junk.mcap").write_bytes(b"not an mcap file at all")
    with pytest.raises(bags.BagError, match="not an MCAP file"):
        bags.open_reader(bag)
