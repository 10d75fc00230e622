"""Which bytes of which segment sit in which cache blocks (one worker, one ring).

A segment's cached bytes are extents, each one block holding segment bytes
[offset, offset + used) from the block's start. Committed appends fill the segment's open
(last, pinned) extent and then fresh blocks, so the tail of every segment is cached as it is
written, copied once. An extent is pinned while any of its bytes are not yet in LTS; once
they all are, it is *closed* (never appended to again) and handed to the ring as evictable;
when the ring evicts it, it disappears from the segment.

Reads get numpy views of the blocks (zero-copy frames). A view of an evictable block is
*lent* until ZeroMQ has sent it (its MessageTracker is done): the ring does not reuse a lent
block, so a reply never carries bytes overwritten under it.
"""

from __future__ import annotations

from bisect import bisect_right
from operator import attrgetter
from typing import Any

import numpy as np

from streamvault.dataplane.cache.ring import BlockRing
from streamvault.dataplane.cache.shared_cache import BlockRef


class Extent:
    __slots__ = ("offset", "ref", "used", "pinned")

    def __init__(self, offset: int, ref: BlockRef) -> None:
        self.offset = offset
        self.ref = ref
        self.used = 0
        self.pinned = True

    @property
    def end(self) -> int:
        return self.offset + self.used


_extent_offset = attrgetter("offset")


class SegmentCache:
    def __init__(self, ring: BlockRing) -> None:
        self.ring = ring
        self.block_bytes = ring.cache.block_bytes
        self._extents: dict[int, list[Extent]] = {}
        self.misses = 0  # bytes that could not be cached (every block pinned)

    def append(self, segment_id: int, offset: int, data: Any) -> bool:
        """Cache `data` as the segment's bytes from `offset`; False if some could not be."""
        source = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        extents = self._extents.setdefault(segment_id, [])
        pos = 0
        while pos < len(source):
            last = extents[-1] if extents else None
            if (
                last is None
                or not last.pinned
                or last.end != offset + pos
                or last.used == self.block_bytes
            ):
                ref = self.ring.allocate()
                if ref is None:
                    self.misses += len(source) - pos
                    return False
                last = Extent(offset + pos, ref)
                extents.append(last)
            take = min(self.block_bytes - last.used, len(source) - pos)
            self.ring.cache.write(last.ref, last.used, source[pos : pos + take])
            last.used += take
            pos += take
        return True

    def read(self, segment_id: int, offset: int, max_bytes: int) -> list[tuple[np.ndarray, int]]:
        """(view, block) pairs of the cached bytes from `offset` (contiguous, up to
        `max_bytes`); [] if `offset` is not cached. Lend the blocks while the views are sent."""
        extents = self._extents.get(segment_id)
        if not extents:
            return []
        index = bisect_right(extents, offset, key=_extent_offset) - 1  # in offset order
        views: list[tuple[np.ndarray, int]] = []
        total = 0
        while 0 <= index < len(extents) and total < max_bytes:
            extent = extents[index]
            start = offset + total
            if not extent.offset <= start < extent.end:
                break
            size = min(extent.end - start, max_bytes - total)
            block = self.ring.cache.block_view(extent.ref.region, extent.ref.block)
            views.append(
                (block[start - extent.offset : start - extent.offset + size], extent.ref.block)
            )
            if not extent.pinned:
                self.ring.touch(extent.ref.block)
            total += size
            index += 1
        return views

    def refs(self, segment_id: int, start: int, end: int) -> list[tuple[BlockRef, int, int]] | None:
        """(block, offset in block, length) covering [start, end), or None if not all cached."""
        out: list[tuple[BlockRef, int, int]] = []
        pos = start
        for extent in self._extents.get(segment_id, ()):
            if extent.end <= pos or extent.offset > pos:
                continue
            take = min(extent.end, end) - pos
            out.append((extent.ref, pos - extent.offset, take))
            pos += take
            if pos >= end:
                return out
        return out if pos >= end else None

    def unpin_below(self, segment_id: int, offset: int) -> None:
        """Bytes below `offset` are in LTS: their wholly covered extents become evictable."""
        for extent in self._extents.get(segment_id, ()):
            if extent.pinned and extent.end <= offset:
                extent.pinned = False
                self.ring.unpin(extent.ref.block, self._evictor(segment_id, extent))

    def _evictor(self, segment_id: int, extent: Extent):
        def evict() -> None:
            extents = self._extents.get(segment_id)
            if extents is not None and extent in extents:
                extents.remove(extent)

        return evict

    def drop_below(self, segment_id: int, offset: int) -> None:
        """The segment was truncated at `offset`: blocks wholly below it are freed."""
        extents = self._extents.get(segment_id, [])
        keep = []
        for extent in extents:
            if extent.end <= offset and (not extent.pinned or extent is not extents[-1]):
                self.ring.free(extent.ref.block, pinned=extent.pinned)
            else:
                keep.append(extent)
        self._extents[segment_id] = keep

    def drop(self, segment_id: int) -> None:
        """Forget a segment (deleted): its blocks go straight back to the ring."""
        for extent in self._extents.pop(segment_id, ()):
            self.ring.free(extent.ref.block, pinned=extent.pinned)

    def pinned_bytes(self, segment_id: int) -> int:
        return sum(e.used for e in self._extents.get(segment_id, ()) if e.pinned)
