"""Journal record format and the recovery scanner of one journal file (see journal.py).

Layout of one record (little-endian), `HEADER` (64 bytes) then the payload:

    magic u32 | version u16 | kind u8 | flags u8 | payload_bytes u32 | file_seq u64 |
    commit_seq u64 | ledger_id u64 | entry_id u64 | epoch u64 | lac i64 | crc32c u32

`crc32c` covers the header's first 60 bytes and the payload. Records of one commit are packed
back to back, each padded with zeros to an 8-byte boundary; all records of a commit carry the
same `commit_seq`, the last one has `FLAG_COMMIT_END`, and the commit is padded with zeros to
a 4096 boundary, where the next commit (`commit_seq` + 1, also across files) starts.
`file_seq` is the sequence number of the file the record was written to: contents a recycled
file kept from its previous life carry an older `file_seq` and are never taken for records
of this file.

Invariants the scanner relies on: a commit is written (in one or more pwrites, whose pages
may land in any order) only after the previous commit's fdatasync returned, and recovery
zeroes the torn remains of the one commit that may have been in flight before the journal
writes again. So beyond the end of the valid commits of a file there is nothing of this
file's `file_seq` except, in the last file, pieces of the in-flight commit (`commit_seq` =
last valid + 1). Anything else proves that durable data was
damaged: `DataCorruption`, never a silent cut. Commit seqs are contiguous, so a commit found
where its predecessor should be (a misdirected write over it), or a file whose first commit
does not follow the previous file's last (that file's final commit was damaged), is not
taken as the next commit: the scan stops there and the probe proves the damage. A commit is
all or nothing: the records of a commit without its valid end record are never yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import crc32c

from streamvault.client.protocol.errors import DataCorruption
from streamvault.dataplane.log.framing import (
    BLOCK_BYTES,
    RECORD_PAYLOAD_BYTES_MAX,
    align_up,
    aligned_finds,
)

JOURNAL_MAGIC = 0x4E4A5653  # b"SVJN" little-endian
JOURNAL_VERSION = 1
KIND_ENTRY = 1
KIND_FENCE = 2
KIND_DELETE = 3
FLAG_COMMIT_END = 0x01
HEADER = struct.Struct("<IHBBIQQQQQqI")
HEADER_BYTES = HEADER.size  # 64
_CRC_COVERED = HEADER_BYTES - 4
_NEEDLE = struct.pack("<IH", JOURNAL_MAGIC, JOURNAL_VERSION)
_ZEROS = bytes(8)


class JournalRecord(NamedTuple):
    kind: int
    flags: int
    payload_bytes: int
    file_seq: int
    commit_seq: int
    ledger_id: int
    entry_id: int
    epoch: int
    lac: int
    pos: int  # position of the header in its file


class ScanEnd(NamedTuple):
    end_pos: int  # 4096-aligned end of the last valid commit: where the next commit goes
    last_commit_seq: int | None  # of the last valid commit seen so far (this file or before)
    torn: bool  # a partial or damaged commit of this file follows the last valid one


def journal_file_name(file_seq: int) -> str:
    return f"journal-{file_seq:016x}.jnl"


def parse_file_name(name: str, prefix: str) -> int | None:
    """The seq in `<prefix><seq:016x>.jnl` (journal files, and free files kept for reuse)."""
    if name.startswith(prefix) and name.endswith(".jnl") and len(name) == len(prefix) + 20:
        try:
            return int(name[len(prefix) : len(prefix) + 16], 16)
        except ValueError:
            return None
    return None


def packed_bytes(payload_bytes: int) -> int:
    """Bytes one record occupies inside a commit (header, payload, 8-byte padding)."""
    return (HEADER_BYTES + payload_bytes + 7) & ~7


_HEAD = struct.Struct(HEADER.format[:-1])  # the header without its crc32c
_CRC = struct.Struct("<I")


def seal_header(
    kind: int,
    flags: int,
    payload: memoryview | bytes,
    file_seq: int,
    commit_seq: int,
    ledger_id: int,
    entry_id: int,
    epoch: int,
    lac: int,
) -> bytes:
    """The header of a record with `payload`, its crc32c included (what `read_record`
    checks). The CRC is taken over the caller's payload, which is then copied as it is."""
    head = _HEAD.pack(
        JOURNAL_MAGIC, JOURNAL_VERSION, kind, flags, len(payload), file_seq, commit_seq,
        ledger_id, entry_id, epoch, lac,
    )  # fmt: skip
    return head + _CRC.pack(crc32c.crc32c(payload, crc32c.crc32c(head)))


def pack_record(
    buf: memoryview, pos: int, payload: memoryview | bytes, record: JournalRecord
) -> int:
    """Write `record` (its `pos` is not stored) sealed with `payload` at `buf[pos:]`; return
    the position after its padding."""
    size = len(payload)
    assert size == record.payload_bytes, (size, record.payload_bytes)
    end = pos + HEADER_BYTES + size
    nxt = pos + packed_bytes(size)
    buf[pos:end] = seal_header(record.kind, record.flags, payload, *record[3:-1]) + payload
    buf[end:nxt] = _ZEROS[: nxt - end]
    return nxt


def read_record(buf: memoryview | bytes, pos: int, file_seq: int) -> JournalRecord | None:
    """The record at `pos` if it is whole, plausible, of file `file_seq` and its CRC
    matches; else None."""
    if len(buf) - pos < HEADER_BYTES:
        return None
    (magic, version, kind, flags, size, seq, commit_seq, ledger, entry, epoch, lac, crc) = (
        HEADER.unpack_from(buf, pos)
    )
    if magic != JOURNAL_MAGIC or version != JOURNAL_VERSION or seq != file_seq:
        return None
    if kind not in (KIND_ENTRY, KIND_FENCE, KIND_DELETE) or size > RECORD_PAYLOAD_BYTES_MAX:
        return None
    if kind != KIND_ENTRY and size:
        return None
    end = pos + HEADER_BYTES + size
    if end > len(buf):
        return None
    view = memoryview(buf)
    check = crc32c.crc32c(view[pos : pos + _CRC_COVERED])
    if crc32c.crc32c(view[pos + HEADER_BYTES : end], check) != crc:
        return None
    return JournalRecord(kind, flags, size, seq, commit_seq, ledger, entry, epoch, lac, pos)


def scan_file(
    view: memoryview,
    *,
    path: str,
    file_seq: int,
    prev_commit_seq: int | None,
    last: bool,
    result: list[ScanEnd],
) -> Iterator[JournalRecord]:
    """Yield the records of the valid commits of one journal file, in order, each commit only
    once it is known complete; append the ScanEnd to `result`.

    `prev_commit_seq` is the last valid commit of the files before (None: none). Raises
    DataCorruption if a valid record of this file beyond the valid end proves that a damaged
    commit had been durable (see module docstring); `last` says whether this is the newest
    file, the only one that may end in a torn commit.
    """
    pos = end = 0
    last_seq = prev_commit_seq
    pending: list[JournalRecord] = []
    while True:
        record = read_record(view, pos, file_seq)
        if record is None:
            break
        if pending and record.commit_seq != pending[0].commit_seq:
            break
        if not pending and last_seq is not None and record.commit_seq != last_seq + 1:
            break  # commit seqs are contiguous across files: a gap means a commit was lost
        pending.append(record)
        pos += packed_bytes(record.payload_bytes)
        if record.flags & FLAG_COMMIT_END:
            yield from pending
            last_seq = record.commit_seq
            pending = []
            pos = end = align_up(pos)
    _probe_beyond_end(view, path, file_seq, end, last_seq, last)
    result.append(ScanEnd(end, last_seq, bool(pending) or _looks_torn(view, end, file_seq)))


def _looks_torn(view: memoryview, end: int, file_seq: int) -> bool:
    """Data at `end` other than zeros or a header of a recycled file's previous life."""
    head = view[end : end + HEADER_BYTES]
    if not any(head):
        return False
    if len(head) == HEADER_BYTES and bytes(head[:6]) == _NEEDLE:
        return HEADER.unpack_from(head)[5] >= file_seq
    return True


def _probe_beyond_end(
    view: memoryview, path: str, file_seq: int, end: int, last_seq: int | None, last: bool
) -> None:
    """Probe every block from `end` to the end of the file for records of this file (only
    blocks that start with the magic are parsed: the search for it runs in C)."""
    found: set[int] = set()
    for probe in _magic_positions(view, end, len(view), BLOCK_BYTES):
        record = read_record(view, probe, file_seq)
        if record is None or (last_seq is not None and record.commit_seq <= last_seq):
            continue
        found.add(record.commit_seq)
        if last:  # the in-flight commit (last_seq + 1) may have landed in pieces
            durable = len(found) > 1 if last_seq is None else record.commit_seq > last_seq + 1
        else:  # every commit of a file rolled over from was synced
            durable = True
        if durable:
            raise DataCorruption(
                f"journal {path}: invalid data at position {end} after commit_seq "
                f"{last_seq}, but commit_seq {record.commit_seq} at position {probe} was "
                "written after it was durable",
                path=path,
                position=end,
                commit_seq=last_seq,
                later_commit_seq=record.commit_seq,
                later_position=probe,
            )


def _magic_positions(view: memoryview, start: int, stop: int, align: int) -> Iterator[int]:
    """The `align`-aligned positions in view[start:stop] where a record header could start."""
    for at in aligned_finds(view, _NEEDLE, start, stop, align):
        if len(view) - at >= HEADER_BYTES:
            yield at


def torn_extent(view: memoryview, start: int, stop: int, file_seq: int) -> int:
    """The 4096-aligned end of the last record of file `file_seq` (CRC not checked) that
    starts at an 8-aligned position in view[start:stop], or `start` if there is none: the
    remains of a torn commit, which must be zeroed before the next commit is written there."""
    extent = start
    for at in _magic_positions(view, start, min(stop, len(view)), 8):
        header = HEADER.unpack_from(view, at)
        if header[5] == file_seq:
            extent = min(align_up(at + HEADER_BYTES + header[4]), len(view))
    return extent
