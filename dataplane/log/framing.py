"""Log record framing: self-identifying, CRC32C-checked, 4 KiB-aligned records.

Layout of one record (little-endian), starting at a 4096-aligned file position:

    magic u32 | version u16 | flags u16 | payload_bytes u32 | ledger_id u64 | entry_id u64 |
    epoch u64 | lac i64 | crc32c u32        (RECORD_HEADER, 48 bytes)
    payload (payload_bytes)
    zero padding up to the next 4096 boundary

`crc32c` covers the header's first 44 bytes and the payload. `lac` (last add confirmed) is
the highest entry id of this ledger known durable when the record was written; recovery uses
it to tell a torn tail (cut it) from corruption of durable data (stop). The header makes a
record self-identifying: a record found in the wrong ledger or at the wrong entry id is
detected as misdirected, not served.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import crc32c

from streamvault.client.protocol.limits import ENTRY_BYTES_MAX

RECORD_MAGIC = 0x474C5653  # b"SVLG" little-endian
RECORD_VERSION = 1
RECORD_HEADER = struct.Struct("<IHHIQQQqI")
RECORD_HEADER_BYTES = RECORD_HEADER.size  # 48
_CRC_COVERED = RECORD_HEADER_BYTES - 4
BLOCK_BYTES = 4096
RECORD_PAYLOAD_BYTES_MAX = ENTRY_BYTES_MAX
"""Largest record payload: a group-commit frame is ~1 MiB; one block of the largest event
(8 MiB + framing) gets a record of its own."""


class RecordHeader(NamedTuple):
    magic: int
    version: int
    flags: int
    payload_bytes: int
    ledger_id: int
    entry_id: int
    epoch: int
    lac: int
    crc: int


def align_up(size: int) -> int:
    return (size + BLOCK_BYTES - 1) & ~(BLOCK_BYTES - 1)


def record_bytes(payload_bytes: int) -> int:
    """Bytes a record with `payload_bytes` of payload occupies on disk, padding included."""
    return align_up(RECORD_HEADER_BYTES + payload_bytes)


def seal_record(
    buf: memoryview, payload_bytes: int, *, ledger_id: int, entry_id: int, epoch: int, lac: int
) -> int:
    """Fill in the header of the record whose payload already sits at
    buf[RECORD_HEADER_BYTES:RECORD_HEADER_BYTES + payload_bytes], zero the padding, and
    return the record's total (aligned) size."""
    assert 0 <= payload_bytes <= RECORD_PAYLOAD_BYTES_MAX, payload_bytes
    total = record_bytes(payload_bytes)
    assert len(buf) >= total, (len(buf), total)
    end = RECORD_HEADER_BYTES + payload_bytes
    buf[end:total] = bytes(total - end)
    RECORD_HEADER.pack_into(
        buf, 0, RECORD_MAGIC, RECORD_VERSION, 0, payload_bytes, ledger_id, entry_id, epoch, lac, 0
    )
    crc = crc32c.crc32c(buf[:_CRC_COVERED])
    crc = crc32c.crc32c(buf[RECORD_HEADER_BYTES:end], crc)
    struct.pack_into("<I", buf, _CRC_COVERED, crc)
    return total


def parse_header(buf: memoryview, pos: int) -> RecordHeader | None:
    """The header at `pos` if its magic, version and size are plausible, else None.
    The CRC is not checked here (see `check_record`)."""
    if len(buf) - pos < RECORD_HEADER_BYTES:
        return None
    header = RecordHeader(*RECORD_HEADER.unpack_from(buf, pos))
    if header.magic != RECORD_MAGIC or header.version != RECORD_VERSION:
        return None
    if header.payload_bytes > RECORD_PAYLOAD_BYTES_MAX:
        return None
    return header


def check_record(buf: memoryview, pos: int, header: RecordHeader) -> bool:
    """True if the whole record at `pos` is present in `buf` and its CRC matches."""
    end = pos + RECORD_HEADER_BYTES + header.payload_bytes
    if end > len(buf):
        return False
    crc = crc32c.crc32c(buf[pos : pos + _CRC_COVERED])
    crc = crc32c.crc32c(buf[pos + RECORD_HEADER_BYTES : end], crc)
    return crc == header.crc


def aligned_finds(
    view: memoryview, needle: bytes, start: int, stop: int, align: int, *, origin: int = 0
) -> Iterator[int]:
    """The positions p in view[start:stop], (p - origin) a multiple of `align`, where
    `needle` starts. `view` must cover the whole of an mmap or bytes object, whose `find`
    does the search in C; Python sees at most one match per `align` bytes, so probing a
    mostly empty file costs no Python work per block."""
    obj = view.obj
    assert hasattr(obj, "find") and len(obj) == len(view), type(obj)
    at = obj.find(needle, start, stop)
    while at >= 0:
        skew = (at - origin) % align
        if skew == 0:
            yield at
            at = obj.find(needle, at + align, stop)
        else:  # on to the next aligned position after it
            at = obj.find(needle, at - skew + align, stop)
