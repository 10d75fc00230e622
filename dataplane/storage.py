"""Long-term storage as the data plane uses it: store a chunk (compress, create, retry),
read a byte range of a chunk (index cached, decompressed frames cached) or its stored zstd
frames (for a reader that decompresses them itself), collect orphans.

Blocking calls, meant for worker threads (the uploader's pool, a worker's LTS pool): never
on a worker's event loop. Every retry loop is bounded (attempts and capped backoff).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import NamedTuple

from streamvault.client.protocol.errors import (
    ChunkExists,
    DataCorruption,
    StorageError,
    StreamVaultError,
)
from streamvault.client.protocol.limits import ZSTD_FRAME_RAW_MAX
from streamvault.dataplane.container.tiering import container_prefix, parse_chunk_name
from streamvault.lts.chunk_format import (
    ChunkIndex,
    ScratchBuffer,
    encode_chunk,
    fetch_frames,
    read_index,
    read_range,
)
from streamvault.lts.chunk_store import ChunkStore

log = logging.getLogger(__name__)

STORE_ATTEMPTS_MAX = 6
STORE_BACKOFF_MAX_S = 2.0
INDEX_CACHE_MAX = 4096
"""Chunk indexes kept per process (each a few KiB)."""
READ_AHEAD_BYTES = 4 * 1024 * 1024
"""An LTS read decompresses at least this much of the chunk; the rest serves the next reads."""
READ_THROUGH_BYTES_MAX = 64 * 1024 * 1024
"""Decompressed LTS bytes kept for read-ahead per process (separate from the shared cache, so
reads of history never evict tail data)."""


class StoredFrames(NamedTuple):
    """Raw bytes [offset, offset + raw_bytes) of a chunk as its stored zstd frames: they
    decompress to `skip` bytes before `offset`, then those bytes, then at most the rest of
    the last frame."""

    skip: int
    raw_bytes: int
    frames: list[memoryview]


_scratch = threading.local()


def thread_scratch(name: str) -> ScratchBuffer:
    """This thread's reusable buffer `name` (one per upload thread: at most the largest
    upload, kept for the next)."""
    buffer = getattr(_scratch, name, None)
    if buffer is None:
        buffer = ScratchBuffer()
        setattr(_scratch, name, buffer)
    return buffer


def store_chunk(store: ChunkStore, name: str, data: bytes | memoryview) -> int:
    """Compress and store `data` as chunk `name`; return the stored size. Idempotent: a chunk
    of that name and size already there is ours (names embed range and epoch)."""
    encoded = encode_chunk(data, out=thread_scratch("encoded"))
    delay = 0.05
    for attempt in range(1, STORE_ATTEMPTS_MAX + 1):
        try:
            store.create(name, encoded)
            return len(encoded)
        except ChunkExists:
            size = store.size(name)
            if size != len(encoded):
                raise DataCorruption(
                    f"upload {name}: a chunk of {size} bytes exists where "
                    f"{len(encoded)} were to be stored"
                ) from None
            return size
        except StorageError as exc:
            if attempt == STORE_ATTEMPTS_MAX:
                raise
            log.info("upload %s attempt %d failed: %s", name, attempt, exc)
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(STORE_BACKOFF_MAX_S, delay * 2)
    raise AssertionError("unreachable")


class ChunkReader:
    """Range reads of chunks with an index cache and a read-through cache of frames."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._indexes: collections.OrderedDict[str, ChunkIndex] = collections.OrderedDict()
        self._ranges: collections.OrderedDict[tuple[str, int], bytes | memoryview] = (
            collections.OrderedDict()
        )
        # stored (compressed) frames sent as they are: (name, first frame) -> the frames
        # of one fetched span, from that one on
        self._spans: collections.OrderedDict[tuple[str, int], list[memoryview]] = (
            collections.OrderedDict()
        )
        self._range_bytes = 0  # decoded ranges and stored spans together

    def _index(self, name: str, stored_bytes: int) -> ChunkIndex:
        with self._lock:
            index = self._indexes.get(name)
            if index is not None:
                self._indexes.move_to_end(name)
                return index
        index = read_index(lambda o, n: self.store.read(name, o, n), stored_bytes)
        with self._lock:
            self._indexes[name] = index
            while len(self._indexes) > INDEX_CACHE_MAX:
                self._indexes.popitem(last=False)
        return index

    def read(self, name: str, stored_bytes: int, offset: int, length: int) -> memoryview:
        """Raw bytes from `offset` of chunk `name`, at most `length` and at least one (none
        at or past its end): a view of the read-through range that holds them (no copy; it
        keeps that range alive). A kept range holding `offset` but ending before
        `offset + length` answers with what it holds: a reply may be short (as at a chunk's
        end), and no byte is decompressed twice for a sequential reader."""
        index = self._index(name, stored_bytes)
        if offset >= index.raw_bytes:
            return memoryview(b"")
        hit = self._cached(name, offset)
        if hit is None:
            start = offset - offset % index.frame_raw_bytes
            span = max(length + (offset - start), READ_AHEAD_BYTES)
            data = read_range(lambda o, n: self.store.read(name, o, n), index, start, span)
            self._remember(name, start, data)
            hit = (start, data)
        start, data = hit
        return memoryview(data)[offset - start : offset - start + length]

    def read_frames(
        self, name: str, stored_bytes: int, offset: int, length: int
    ) -> StoredFrames | None:
        """Raw bytes from `offset` of chunk `name`, at most `length`, as the zstd frames they
        are stored in (CRC-checked, not decompressed): from `offset`'s frame up to the last
        frame that ends within `length`, or that one frame alone. None where a decoded range
        already holds `offset` (cheaper to send as it is), at or past the chunk's end, or
        where any of the frames is stored raw (`read` sends raw bytes as they are). The
        stored bytes of the frames a read ahead covers (`READ_AHEAD_BYTES` of raw bytes) are
        kept for the next reads, as decoded ranges are."""
        index = self._index(name, stored_bytes)
        size = index.frame_raw_bytes
        if offset >= index.raw_bytes or length <= 0 or size > ZSTD_FRAME_RAW_MAX:
            return None
        if self._cached(name, offset) is not None:
            return None
        first = offset // size
        end = min(offset + length, index.raw_bytes)
        last = first
        while last + 1 < index.frame_count and min((last + 2) * size, index.raw_bytes) <= end:
            last += 1
        if any(index.frame_is_raw(i) for i in range(first, last + 1)):
            return None
        kept_first, views = self._stored_frames(name, index, first, last)
        raw = min(min((last + 1) * size, index.raw_bytes) - offset, length)
        return StoredFrames(
            offset - first * size, raw, views[first - kept_first : last + 1 - kept_first]
        )

    def _stored_frames(
        self, name: str, index: ChunkIndex, first: int, last: int
    ) -> tuple[int, list[memoryview]]:
        """(first frame, the stored frames from it on) of a kept span holding frames
        first..last, or of a span fetched and checked for them and the read ahead, kept."""
        with self._lock:
            for (kept_name, kept_first), views in reversed(self._spans.items()):
                if kept_name == name and kept_first <= first and last < kept_first + len(views):
                    self._spans.move_to_end((kept_name, kept_first))
                    return kept_first, views
        ahead = max(1, READ_AHEAD_BYTES // index.frame_raw_bytes)
        stop = min(index.frame_count, max(last + 1, first + ahead))
        span, views = fetch_frames(
            lambda o, n: self.store.read(name, o, n), index, range(first, stop)
        )
        with self._lock:
            old = self._spans.pop((name, first), None)
            self._range_bytes += len(span) - (sum(map(len, old)) if old else 0)
            self._spans[(name, first)] = views
            self._trim()
        return first, views

    def _cached(self, name: str, offset: int) -> tuple[int, bytes | memoryview] | None:
        """A read-through range of `name` holding byte `offset`: a sequential reader's next
        reads fall inside the range read ahead for its first, whatever their frame."""
        with self._lock:
            for key in reversed(self._ranges):
                data = self._ranges[key]
                if key[0] == name and key[1] <= offset < key[1] + len(data):
                    self._ranges.move_to_end(key)
                    return key[1], data
            return None

    def _remember(self, name: str, start: int, data: bytes | memoryview) -> None:
        with self._lock:
            old = self._ranges.pop((name, start), None)
            self._range_bytes -= len(old) if old else 0
            self._ranges[(name, start)] = data
            self._range_bytes += len(data)
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest decoded ranges, then the oldest stored spans, while over budget
        (the newest of each stays). Called with the lock held."""
        while self._range_bytes > READ_THROUGH_BYTES_MAX and len(self._ranges) > 1:
            _, dropped = self._ranges.popitem(last=False)
            self._range_bytes -= len(dropped)
        while self._range_bytes > READ_THROUGH_BYTES_MAX and len(self._spans) > 1:
            _, views = self._spans.popitem(last=False)
            self._range_bytes -= sum(map(len, views))

    def forget(self, name: str) -> None:
        with self._lock:
            self._indexes.pop(name, None)
            for key in [k for k in self._ranges if k[0] == name]:
                self._range_bytes -= len(self._ranges.pop(key))
            for key in [k for k in self._spans if k[0] == name]:
                self._range_bytes -= sum(map(len, self._spans.pop(key)))


def collect_orphans(
    store: ChunkStore, container_id: int, referenced: set[str], epoch: int
) -> list[str]:
    """Delete this container's chunks that no segment refers to and that an owner of an
    older epoch wrote: it died between upload and metadata, or the segment was deleted.
    Chunks of the current epoch are never touched (their upload may be in flight; a segment
    deleted in this epoch has its known chunks deleted at once, the rest wait for the next
    epoch). Returns the deleted names."""
    deleted = []
    for info in store.list(container_prefix(container_id)):
        parsed = parse_chunk_name(info.name)
        if parsed is None or info.name in referenced or parsed[4] >= epoch:
            continue
        try:
            if store.delete(info.name):
                deleted.append(info.name)
        except StreamVaultError as exc:
            log.warning("orphan %s not deleted: %s", info.name, exc)
    return deleted
