"""One segment's state inside its container, and its read index.

Two views of every mutable field: `pending_*` includes operations accepted but not yet
durable (used to validate and assign offsets), the plain fields hold only what the durable
log has acknowledged (what readers and `SetupAppend` see). The read index maps segment
offsets to positions in the durable log: three parallel int64 arrays (segment offset,
ledger id, file position), one entry per committed APPEND, never one per event.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from operator import attrgetter
from typing import NamedTuple


class Piece(NamedTuple):
    ledger_id: int
    position: int
    length: int


class Chunk(NamedTuple):
    """Segment bytes [start, end) stored in LTS as chunk `name` of `stored_bytes`."""

    start: int
    end: int
    name: str
    stored_bytes: int


class Segment:
    __slots__ = (
        "segment_id", "name", "length", "pending_length", "sealed", "pending_sealed",
        "deleting", "created", "start_offset", "writers", "pending_writers", "_offsets", "_ledgers",
        "_positions", "waiters", "storage_length", "chunks", "uploading", "dirty_since",
        "retry_end",
    )  # fmt: skip

    def __init__(self, segment_id: int, name: bytes) -> None:
        self.segment_id = segment_id
        self.name = name
        self.length = 0
        self.pending_length = 0
        self.sealed = False
        self.pending_sealed = False
        self.deleting = False
        self.created = False  # the CREATE is durable
        self.start_offset = 0
        self.writers: dict[bytes, int] = {}
        self.pending_writers: dict[bytes, int] = {}
        self._offsets = array("q")
        self._ledgers = array("q")
        self._positions = array("q")
        self.waiters: list = []
        self.storage_length = 0  # bytes [start_offset, storage_length) are in LTS
        self.chunks: list[Chunk] = []
        self.uploading = 0  # end offset of the upload in progress, 0 if none
        self.dirty_since = 0.0  # when the oldest byte not yet in LTS was committed
        self.retry_end = 0  # end of a failed upload: retried as the same range (same chunk)

    def last_event(self, writer_id: bytes) -> int:
        return self.writers.get(writer_id, -1)

    def pending_last_event(self, writer_id: bytes) -> int:
        last = self.pending_writers.get(writer_id)
        return self.writers.get(writer_id, -1) if last is None else last

    def index_add(self, offset: int, ledger_id: int, position: int) -> None:
        """Record that segment bytes from `offset` (to the next entry or the length) live in
        `ledger_id` at `position`. Adjacent extents in one ledger are coalesced."""
        offsets = self._offsets
        if offsets:
            last = len(offsets) - 1
            if (
                self._ledgers[last] == ledger_id
                and self._positions[last] + (offset - offsets[last]) == position
            ):
                return
        offsets.append(offset)
        self._ledgers.append(ledger_id)
        self._positions.append(position)

    def index_trim(self, offset: int) -> None:
        """Forget log extents wholly below `offset` (their bytes are in LTS now)."""
        keep = bisect_right(self._offsets, offset) - 1
        if keep > 0:
            del self._offsets[:keep], self._ledgers[:keep], self._positions[:keep]

    def truncate(self, offset: int) -> list[Chunk]:
        """Drop bytes below `offset`: returns the chunks now wholly below it."""
        self.start_offset = max(self.start_offset, offset)
        self.storage_length = max(self.storage_length, self.start_offset)
        self.index_trim(self.start_offset)
        dropped = [c for c in self.chunks if c.end <= self.start_offset]
        self.chunks = [c for c in self.chunks if c.end > self.start_offset]
        return dropped

    def first_ledger(self) -> int | None:
        """The oldest ledger still holding bytes of this segment not yet in LTS."""
        return self._ledgers[0] if self._offsets and self.length > self.storage_length else None

    def pieces(self, start: int, end: int) -> list[Piece]:
        """Log pieces holding exactly [start, end) (for uploads; unlike `plan`, the last
        entry is cut to fit)."""
        assert self.start_offset <= start <= end <= self.length
        pieces: list[Piece] = []
        offset = start
        while offset < end:
            batch = self.plan(offset, end - offset)
            if not batch:
                break
            pieces.extend(batch)
            offset += sum(p.length for p in batch)
        return pieces

    def chunk_for(self, offset: int) -> Chunk | None:
        """The LTS chunk holding byte `offset` (chunks are in offset order: O(log n) per
        read, however long the stream's history)."""
        index = bisect_right(self.chunks, offset, key=_chunk_start) - 1
        if index >= 0 and self.chunks[index].start <= offset < self.chunks[index].end:
            return self.chunks[index]
        return None

    def plan(self, offset: int, max_bytes: int) -> list[Piece]:
        """Pieces of log holding [offset, min(length, offset + max_bytes)); whole index
        entries are preferred, so replies end on block (and thus event) boundaries when
        they can."""
        assert self.start_offset <= offset < self.length
        offsets = self._offsets
        index = bisect_right(offsets, offset) - 1
        pieces: list[Piece] = []
        total = 0
        count = len(offsets)
        while index < count and total < max_bytes:
            entry_start = offsets[index]
            entry_end = offsets[index + 1] if index + 1 < count else self.length
            start = max(offset, entry_start)
            size = entry_end - start
            if total + size > max_bytes:
                if pieces:
                    break
                size = max_bytes - total
            pieces.append(
                Piece(self._ledgers[index], self._positions[index] + (start - entry_start), size)
            )
            total += size
            index += 1
        return pieces


_chunk_start = attrgetter("start")
