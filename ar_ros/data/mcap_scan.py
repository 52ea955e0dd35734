"""Read the intact part of an MCAP file that has no summary or footer (a recording that was cut off).

When ``ros2 bag record`` is killed, or the robot loses power, the MCAP file ends mid-record and has no
footer, and often no ``metadata.yaml`` is written. ROS 2's own reader then scans the file from the start;
rosbags refuses it. :class:`ScanReader` does what ROS 2 does: it walks the records from the beginning
(schemas, channels, messages, chunks compressed with zstd or lz4) and stops at the first record that runs
past the end of the file. Damaged chunks are skipped and counted. Messages come in file order, which for
a recording is arrival order.

It offers the part of the rosbags ``Reader`` interface that ar_ros uses: ``connections``,
``messages(connections=...)``, ``close()``.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from ..errors import ArRosError

MAGIC = b"\x89MCAP0\r\n"
OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_DATA_END = 0x03, 0x04, 0x05, 0x06, 0x0F
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class ScanError(ArRosError, ValueError):
    """Not an MCAP file, or nothing readable in it."""


@dataclass
class MsgDef:
    data: str


@dataclass
class Ext:
    offered_qos_profiles: list = field(default_factory=list)
    serialization_format: str = "cdr"


@dataclass
class ScanConnection:
    """A channel of the file, with the attributes of a rosbags ``Connection`` that ar_ros reads."""

    id: int
    topic: str
    msgtype: str
    msgdef: MsgDef
    digest: str = ""
    msgcount: int = 0
    ext: Ext = field(default_factory=Ext)


def _string(buf: memoryview, pos: int) -> Tuple[str, int]:
    (n,) = _U32.unpack_from(buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError("string runs past its record")
    return bytes(buf[pos + 4:end]).decode("utf-8", "replace"), end


MAX_CHUNK = 1 << 30  # rosbag2 writes chunks of about a megabyte; a larger declared size is damage


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    """The ``size`` bytes a chunk declares, never more (a damaged stream cannot make us allocate more)."""
    if size > MAX_CHUNK:
        raise ValueError(f"chunk declares {size} bytes")
    if compression == "":
        out = data
    elif compression == "zstd":
        try:
            from compression import zstd  # Python 3.14
        except ImportError:
            from backports import zstd  # what rosbags installs before 3.14
        out = zstd.ZstdDecompressor().decompress(data, max_length=size + 1)
    elif compression == "lz4":
        import lz4.frame
        out = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=size + 1)
    else:
        raise ValueError(f"unsupported chunk compression {compression!r}")
    if len(out) != size:
        raise ValueError(f"chunk holds {len(out)} bytes, declares {size}")
    return out


class ScanReader:
    """The intact records of one recording's MCAP files (split files in order), found by a linear scan.

    Channels are matched across files by (topic, type). ``truncated`` tells whether a file ended inside a
    record or without its footer; ``damaged_chunks`` counts chunks that could not be decompressed or parsed.
    """

    def __init__(self, paths: Union[str, Path, Sequence[Union[str, Path]]]) -> None:
        self.paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        self.truncated = False
        self.damaged_chunks = 0
        self.connections: List[ScanConnection] = []
        self._by_key: Dict[Tuple[str, str], ScanConnection] = {}
        for path in self.paths:
            for conn, _t, _data in self._scan(path, first=True):
                conn.msgcount += 1
        if not self.connections:
            raise ScanError(f"{', '.join(map(str, self.paths))}: no complete channel record"
                            f"{' (cut off inside its first chunk)' if self.truncated else ''}")

    def _scan(self, path: Path, first: bool) -> Iterator[Tuple[ScanConnection, int, Optional[bytes]]]:
        schemas: Dict[int, Tuple[str, str]] = {}
        channels: Dict[int, ScanConnection] = {}
        with path.open("rb") as bio:
            if bio.read(8) != MAGIC:
                raise ScanError(f"{path}: not an MCAP file (bad magic)")
            for op, body in self._records(bio, first):
                records = self._chunk(body, first) if op == OP_CHUNK else [(op, body)]
                for rop, rec in records:
                    try:
                        if rop == OP_SCHEMA:
                            (sid,) = _U16.unpack_from(rec, 0)
                            name, pos = _string(rec, 2)
                            _encoding, pos = _string(rec, pos)
                            text, _ = _string(rec, pos)
                            schemas[sid] = (name, text)
                        elif rop == OP_CHANNEL:
                            cid, sid = _U16.unpack_from(rec, 0)[0], _U16.unpack_from(rec, 2)[0]
                            topic, pos = _string(rec, 4)
                            encoding, _ = _string(rec, pos)
                            if sid in schemas:
                                channels[cid] = self._connection(topic, *schemas[sid], encoding)
                        elif rop == OP_MESSAGE:
                            conn = channels.get(_U16.unpack_from(rec, 0)[0])
                            if conn is not None:
                                yield conn, _U64.unpack_from(rec, 6)[0], None if first else bytes(rec[22:])
                    except (struct.error, ValueError):  # a malformed record inside an intact chunk: skip it
                        continue

    def _connection(self, topic: str, msgtype: str, msgdef: str, encoding: str) -> ScanConnection:
        key = (topic, msgtype)
        if key not in self._by_key:
            conn = ScanConnection(len(self.connections), topic, msgtype, MsgDef(msgdef),
                                  ext=Ext(serialization_format=encoding))
            self._by_key[key] = conn
            self.connections.append(conn)
        return self._by_key[key]

    def _records(self, bio: BinaryIO, first: bool) -> Iterator[Tuple[int, memoryview]]:
        """Top-level (op, body) records until the data section ends or the file is cut off."""
        size = os.fstat(bio.fileno()).st_size
        while True:
            head = bio.read(9)
            if len(head) < 9:
                self.truncated |= first
                return
            op, (length,) = head[0], _U64.unpack_from(head, 1)
            if op == OP_DATA_END:
                return
            if bio.tell() + length > size:  # cut off here (or a damaged length): read no further
                self.truncated |= first
                return
            yield op, memoryview(bio.read(length))

    def _chunk(self, body: memoryview, first: bool) -> List[Tuple[int, memoryview]]:
        """The records inside a chunk; a damaged chunk gives none (and is counted on the first pass)."""
        try:
            # message start and end time, uncompressed size (u64 each), crc (u32), compression, records
            compression, pos = _string(body, 28)
            (size,) = _U64.unpack_from(body, pos)
            if pos + 8 + size > len(body):
                raise ValueError("records run past the chunk")
            view = memoryview(_decompress(bytes(body[pos + 8:pos + 8 + size]), compression,
                                          _U64.unpack_from(body, 16)[0]))
            records, pos = [], 0
            while pos < len(view):
                op, (length,) = view[pos], _U64.unpack_from(view, pos + 1)
                if pos + 9 + length > len(view):
                    raise ValueError("a record runs past the chunk")
                records.append((op, view[pos + 9:pos + 9 + length]))
                pos += 9 + length
            return records
        except Exception:  # truncated header, unknown codec, corrupt stream
            self.damaged_chunks += first
            return []

    # ------------------------------------------------------------------ the Reader interface
    def messages(self, connections: Iterable[ScanConnection] = ()) -> Iterator[Tuple[ScanConnection, int, bytes]]:
        """(connection, log time ns, raw CDR bytes) of the intact messages, in file order."""
        wanted = {c.id for c in connections} or {c.id for c in self.connections}
        for path in self.paths:
            for conn, t, data in self._scan(path, first=False):
                assert data is not None  # first=False: every message carries its bytes
                if conn.id in wanted:
                    yield conn, t, data

    def close(self) -> None:
        """Nothing stays open between calls (kept for the Reader interface)."""
