"""The container's operations as they are written into durable-log records.

A record's payload is a sequence of operations, each `op u8 | body_bytes u32 | body`:

    CREATE  segment_id u64 | name_bytes u16 | name
    APPEND  segment_id u64 | writer_id 16s | first_event u64 | last_event u64 |
            event_count u32 | segment_offset u64 | data (the rest of the body)
    SEAL    segment_id u64 | length u64
    DELETE  segment_id u64
    CHUNK   segment_id u64 | start u64 | end u64 | stored_bytes u64 | name_bytes u16 | name
            (bytes [start, end) of the segment are in LTS as chunk `name`)
    TRUNCATE segment_id u64 | offset u64 (bytes below offset are dropped)
    CHECKPOINT covered_ledger u64 | covered_entry i64 | snapshot (msgpack, checkpoint.py)
            (the container's metadata after the record at (covered_ledger, covered_entry))

An APPEND carries the data and the writer's new last event number in one operation, so the
writer attribute and the bytes become durable together (deduplication survives crashes).
Several blocks of one writer to one segment that share a record are merged into one APPEND.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from streamvault.client.protocol.errors import DataCorruption

OP_HEAD = struct.Struct("<BI")
CREATE = struct.Struct("<QH")
APPEND = struct.Struct("<Q16sqqIQ")
SEAL = struct.Struct("<QQ")
DELETE = struct.Struct("<Q")
CHUNK = struct.Struct("<QQQQH")
CHECKPOINT = struct.Struct("<Qq")
TRUNCATE = struct.Struct("<QQ")

OP_CREATE = 1
OP_APPEND = 2
OP_SEAL = 3
OP_DELETE = 4
OP_CHUNK = 5
OP_CHECKPOINT = 6
OP_TRUNCATE = 7

APPEND_OVERHEAD = OP_HEAD.size + APPEND.size
"""Bytes an APPEND adds on top of its data."""


class Op(NamedTuple):
    kind: int
    segment_id: int
    name: bytes  # CREATE, CHUNK
    writer_id: bytes  # APPEND
    first_event: int
    last_event: int
    event_count: int
    offset: int  # APPEND: segment offset of the data; SEAL: final length; CHUNK: start
    data_pos: int  # APPEND: position of the data within the record payload; CHUNK: end
    data_bytes: int  # APPEND: data length; CHUNK: stored bytes


def put_create(buf: memoryview, pos: int, segment_id: int, name: bytes) -> int:
    OP_HEAD.pack_into(buf, pos, OP_CREATE, CREATE.size + len(name))
    pos += OP_HEAD.size
    CREATE.pack_into(buf, pos, segment_id, len(name))
    pos += CREATE.size
    buf[pos : pos + len(name)] = name
    return pos + len(name)


def put_append_head(
    buf: memoryview,
    pos: int,
    *,
    segment_id: int,
    writer_id: bytes,
    first_event: int,
    last_event: int,
    event_count: int,
    offset: int,
    data_bytes: int,
) -> int:
    """Write an APPEND's header; the caller copies `data_bytes` of data at the returned pos."""
    OP_HEAD.pack_into(buf, pos, OP_APPEND, APPEND.size + data_bytes)
    APPEND.pack_into(
        buf, pos + OP_HEAD.size, segment_id, writer_id, first_event, last_event, event_count, offset
    )
    return pos + APPEND_OVERHEAD


def put_seal(buf: memoryview, pos: int, segment_id: int, length: int) -> int:
    OP_HEAD.pack_into(buf, pos, OP_SEAL, SEAL.size)
    SEAL.pack_into(buf, pos + OP_HEAD.size, segment_id, length)
    return pos + OP_HEAD.size + SEAL.size


def put_delete(buf: memoryview, pos: int, segment_id: int) -> int:
    OP_HEAD.pack_into(buf, pos, OP_DELETE, DELETE.size)
    DELETE.pack_into(buf, pos + OP_HEAD.size, segment_id)
    return pos + OP_HEAD.size + DELETE.size


def put_chunk(
    buf: memoryview,
    pos: int,
    segment_id: int,
    *,
    start: int,
    end: int,
    stored_bytes: int,
    name: bytes,
) -> int:
    OP_HEAD.pack_into(buf, pos, OP_CHUNK, CHUNK.size + len(name))
    CHUNK.pack_into(buf, pos + OP_HEAD.size, segment_id, start, end, stored_bytes, len(name))
    pos += OP_HEAD.size + CHUNK.size
    buf[pos : pos + len(name)] = name
    return pos + len(name)


def put_checkpoint(buf: memoryview, pos: int, *, covered: tuple[int, int], snapshot: bytes) -> int:
    OP_HEAD.pack_into(buf, pos, OP_CHECKPOINT, CHECKPOINT.size + len(snapshot))
    CHECKPOINT.pack_into(buf, pos + OP_HEAD.size, covered[0], covered[1])
    pos += OP_HEAD.size + CHECKPOINT.size
    buf[pos : pos + len(snapshot)] = snapshot
    return pos + len(snapshot)


def put_truncate(buf: memoryview, pos: int, segment_id: int, offset: int) -> int:
    OP_HEAD.pack_into(buf, pos, OP_TRUNCATE, TRUNCATE.size)
    TRUNCATE.pack_into(buf, pos + OP_HEAD.size, segment_id, offset)
    return pos + OP_HEAD.size + TRUNCATE.size


TRUNCATE_BYTES = OP_HEAD.size + TRUNCATE.size
CHECKPOINT_BYTES = OP_HEAD.size + CHECKPOINT.size
CHUNK_BYTES = OP_HEAD.size + CHUNK.size
CREATE_BYTES = OP_HEAD.size + CREATE.size
SEAL_BYTES = OP_HEAD.size + SEAL.size
DELETE_BYTES = OP_HEAD.size + DELETE.size


def iter_ops(payload: memoryview) -> Iterator[Op]:
    """Decode the operations of one record payload (the record's CRC already matched, so a
    malformed operation means a bug or a foreign record: DataCorruption)."""
    pos = 0
    end = len(payload)
    while pos < end:
        if end - pos < OP_HEAD.size:
            raise DataCorruption(f"log op at {pos}: truncated header")
        kind, body = OP_HEAD.unpack_from(payload, pos)
        start = pos + OP_HEAD.size
        stop = start + body
        if stop > end:
            raise DataCorruption(f"log op at {pos}: body_bytes={body} overruns the record")
        if kind == OP_APPEND and body >= APPEND.size:
            seg, writer, first, last, count, offset = APPEND.unpack_from(payload, start)
            data_pos = start + APPEND.size
            yield Op(kind, seg, b"", writer, first, last, count, offset, data_pos, stop - data_pos)
        elif kind == OP_CREATE and body >= CREATE.size:
            seg, name_bytes = CREATE.unpack_from(payload, start)
            if CREATE.size + name_bytes != body:
                raise DataCorruption(f"log op at {pos}: CREATE name length mismatch")
            name = bytes(payload[start + CREATE.size : stop])
            yield Op(kind, seg, name, b"", 0, 0, 0, 0, 0, 0)
        elif kind == OP_SEAL and body == SEAL.size:
            seg, length = SEAL.unpack_from(payload, start)
            yield Op(kind, seg, b"", b"", 0, 0, 0, length, 0, 0)
        elif kind == OP_CHUNK and body >= CHUNK.size:
            seg, chunk_start, chunk_end, stored, name_bytes = CHUNK.unpack_from(payload, start)
            if CHUNK.size + name_bytes != body:
                raise DataCorruption(f"log op at {pos}: CHUNK name length mismatch")
            name = bytes(payload[stop - name_bytes : stop])
            yield Op(kind, seg, name, b"", 0, 0, 0, chunk_start, chunk_end, stored)
        elif kind == OP_CHECKPOINT and body >= CHECKPOINT.size:
            ledger, entry = CHECKPOINT.unpack_from(payload, start)
            snapshot = bytes(payload[start + CHECKPOINT.size : stop])
            yield Op(kind, 0, snapshot, b"", 0, 0, 0, ledger, entry, 0)
        elif kind == OP_TRUNCATE and body == TRUNCATE.size:
            seg, offset = TRUNCATE.unpack_from(payload, start)
            yield Op(kind, seg, b"", b"", 0, 0, 0, offset, 0, 0)
        elif kind == OP_DELETE and body == DELETE.size:
            (seg,) = DELETE.unpack_from(payload, start)
            yield Op(kind, seg, b"", b"", 0, 0, 0, 0, 0, 0)
        else:
            raise DataCorruption(f"log op at {pos}: unknown kind={kind} or body_bytes={body}")
        pos = stop
