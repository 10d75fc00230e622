"""Moving segment bytes from the durable log to long-term storage.

A segment is *due* for upload when its bytes not yet in LTS reach `flush_bytes`, or the
oldest of them has waited `flush_wait_s`, or the segment is sealed, or its container is
idle (no record for `container.IDLE_S`: the tail would otherwise keep the log's ledgers
holding it for up to `flush_wait_s`, and in a bookie's shared journal every file written
after them). One upload per segment is in progress at a time and takes at most
`upload_bytes_max` bytes, always starting at the segment's `storage_length` (so chunks
tile the segment with no gap or overlap).

Chunk names embed the container, the segment, the byte range and the owner's epoch:
`c0003/scope/stream/12/00000000000000000000-00000000000004194304-e7`. Two uploads of the
same range by the same owner produce the same name and the same bytes (a retry is
idempotent); a stale owner (older epoch) can never write a name the current owner uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from streamvault.dataplane.cache.segment_cache import SegmentCache
from streamvault.dataplane.cache.shared_cache import BlockRef
from streamvault.dataplane.container.segment import Segment


class TieringConfig(NamedTuple):
    flush_bytes: int = 8 * 1024 * 1024
    flush_wait_s: float = 30.0
    upload_bytes_max: int = 64 * 1024 * 1024


class UploadTask(NamedTuple):
    segment_id: int
    segment: bytes
    start: int
    end: int
    chunk: str
    refs: list[tuple[BlockRef, int, int]] | None  # cache blocks holding [start, end), if all are


_CHUNK_RE = re.compile(r"c(\d{4})/(.+)/(\d{20})-(\d{20})-e(\d+)$")


def chunk_name(container_id: int, segment: bytes, start: int, end: int, epoch: int) -> str:
    return f"c{container_id:04d}/{segment.decode()}/{start:020d}-{end:020d}-e{epoch}"


def container_prefix(container_id: int) -> str:
    return f"c{container_id:04d}/"


def parse_chunk_name(name: str) -> tuple[int, str, int, int, int] | None:
    """(container, segment, start, end, epoch), or None for a name we did not make."""
    match = _CHUNK_RE.fullmatch(name)
    if match is None:
        return None
    container, segment, start, end, epoch = match.groups()
    return int(container), segment, int(start), int(end), int(epoch)


def due_uploads(
    segments: list[Segment],
    *,
    now: float,
    config: TieringConfig,
    cache: SegmentCache | None,
    cache_key: Callable[[Segment], int],
    container_id: int,
    epoch: int,
    idle: bool = False,
) -> list[UploadTask]:
    tasks = []
    for seg in segments:
        pending = seg.length - seg.storage_length
        if pending <= 0 or seg.uploading or seg.deleting:
            continue
        retry = seg.storage_length < seg.retry_end <= seg.length
        if (
            not retry
            and pending < config.flush_bytes
            and not seg.sealed
            and not idle
            and now - seg.dirty_since < config.flush_wait_s
        ):
            continue
        if retry:  # the same range, so the same chunk name as the attempt that may have landed
            end = seg.retry_end
        else:
            end = min(seg.length, seg.storage_length + config.upload_bytes_max)
        refs = cache.refs(cache_key(seg), seg.storage_length, end) if cache else None
        seg.uploading = end
        tasks.append(
            UploadTask(
                seg.segment_id,
                seg.name,
                seg.storage_length,
                end,
                chunk_name(container_id, seg.name, seg.storage_length, end, epoch),
                refs,
            )
        )
    return tasks


def truncation_ledger(segments: list[Segment], current_ledger: int) -> int:
    """The oldest ledger still holding bytes not yet in LTS (or `current_ledger`)."""
    oldest = current_ledger
    for seg in segments:
        first = seg.first_ledger()
        if first is not None and first < oldest:
            oldest = first
    return oldest
