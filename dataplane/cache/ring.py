"""One worker's region of the shared cache as a ring of blocks.

Blocks are handed out in ring order (the least recently freed first), so a freed block is
reused as late as possible and readers holding its old generation rarely lose the race.
Each allocated block is either *pinned* (it holds data not yet in LTS: never evicted) or
*evictable* (its data is in LTS: reusable, least recently used first, when no block is
free). Utilization is the pinned share of the region; it drives throttling: writers slow
down from `throttle_from` and stop at `stop_at` (DESIGN.md §6).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from streamvault.dataplane.cache.shared_cache import BlockRef, SharedCache

THROTTLE_FROM = 0.75
STOP_AT = 0.90
LENT_SCAN_MAX = 256
"""Evictable blocks looked at per allocation when the oldest are still being sent."""


class BlockRing:
    def __init__(
        self,
        cache: SharedCache,
        region: int,
        *,
        throttle_from: float = THROTTLE_FROM,
        stop_at: float = STOP_AT,
    ) -> None:
        assert 0 < throttle_from < stop_at <= 1.0
        self.cache = cache
        self.region = region
        self.total = cache.blocks_per_region
        self.throttle_from = throttle_from
        self.stop_at = stop_at
        self._free: deque[int] = deque(range(self.total))
        self._evictable: OrderedDict[int, Callable[[], None]] = OrderedDict()
        self._lent: dict[int, Any] = {}  # block -> zmq MessageTracker of a reply using it
        self.pinned = 0
        self.evictions = 0

    def allocate(self) -> BlockRef | None:
        """A fresh pinned block (evicting the least recently used evictable one if needed),
        or None when every block is pinned."""
        block = self._take_free()
        if block is None:
            block = self._evict_one()
            if block is None:
                return None
        self.pinned += 1
        return self.cache.claim(self.region, block)

    def _busy(self, block: int) -> bool:
        tracker = self._lent.get(block)
        if tracker is None:
            return False
        if tracker.done:
            del self._lent[block]
            return False
        return True

    def _take_free(self) -> int | None:
        for _ in range(len(self._free)):
            block = self._free.popleft()
            if not self._busy(block):
                return block
            self._free.append(block)
        return None

    def _evict_one(self) -> int | None:
        """The least recently used evictable block not lent to a reply (scanning at most
        LENT_SCAN_MAX), after its owner has forgotten it; None if there is none."""
        for block in islice(self._evictable, LENT_SCAN_MAX):
            if not self._busy(block):
                break
        else:
            return None
        on_evict = self._evictable.pop(block)
        on_evict()  # the owner forgets the block before it is reused
        self.evictions += 1
        return block

    def lend(self, block: int, tracker: Any) -> None:
        """A reply refers to `block` until `tracker.done`: do not reuse it before."""
        self._lent[block] = tracker

    def unpin(self, block: int, on_evict: Callable[[], None]) -> None:
        """The block's data is in LTS: it may be evicted; `on_evict` runs when it is."""
        assert block not in self._evictable
        self.pinned -= 1
        self._evictable[block] = on_evict

    def touch(self, block: int) -> None:
        """A read used an evictable block: keep it longer."""
        if block in self._evictable:
            self._evictable.move_to_end(block)

    def free(self, block: int, *, pinned: bool) -> None:
        """The block's content is no longer wanted at all (e.g. its segment was deleted)."""
        if pinned:
            self.pinned -= 1
        else:
            del self._evictable[block]
        self.cache.claim(self.region, block)  # invalidate readers' refs at once
        self._free.append(block)

    @property
    def utilization(self) -> float:
        """The pinned share of the region."""
        return self.pinned / self.total

    def credit(self) -> float:
        """1.0 below `throttle_from`, falling linearly to 0.0 at `stop_at`."""
        used = self.utilization
        if used <= self.throttle_from:
            return 1.0
        if used >= self.stop_at:
            return 0.0
        return (self.stop_at - used) / (self.stop_at - self.throttle_from)
