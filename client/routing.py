"""Routing keys to segments: a stable hash of the key to [0, 1), then the active segment
whose key range holds the point. Keys without a routing key go round-robin."""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Sequence
from typing import Generic, TypeVar

from streamvault.client.protocol.naming import key_point

T = TypeVar("T")
KEY_CACHE_MAX = 100_000
"""Routing keys remembered (hash → segment); the cache is dropped whole when full."""


class Router(Generic[T]):
    def __init__(self, lows: Sequence[float], targets: Sequence[T]) -> None:
        assert lows and len(lows) == len(targets) and lows[0] == 0.0
        assert all(a < b for a, b in itertools.pairwise(lows)), "key ranges must ascend"
        self._lows = list(lows)
        self._targets = list(targets)
        self._cache: dict[str, T] = {}
        self._round_robin = itertools.cycle(self._targets)

    def route(self, routing_key: str | None) -> T:
        if routing_key is None:
            return next(self._round_robin)
        target = self._cache.get(routing_key)
        if target is None:
            if len(self._cache) >= KEY_CACHE_MAX:
                self._cache.clear()
            index = bisect_right(self._lows, key_point(routing_key)) - 1
            target = self._cache[routing_key] = self._targets[index]
        return target
