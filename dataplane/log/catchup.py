"""Catch-up: copying to a bookie the entries it missed while it was down or cut off.

An entry completes at the ack quorum; a bookie of its write quorum that had not acknowledged
it by then *missed* it (the entry has fewer than Qw copies). `CatchUp` remembers such entries
per bookie (bounded), forgets one when the bookie's late ack comes, and once the bookie
answers again (it acknowledged something, or the probing copy sent every `timeout_s` to a
bookie that gets no new entries, such as one an ensemble change left out), copies the rest
to it: read the entry from a bookie that has it, add it to the lagging one (adds are
idempotent), a bounded number at a time. Entries of ledgers the log has since deleted are
skipped.

An entry is copied only once it has been missed for `grace_s`: the slowest bookie of a
healthy ensemble misses most entries by a fraction of a millisecond, and its own add is
still on the way; copying then would read the entry from a replica and journal it a second
time for nothing (counted apart: `catchup_late_acks` are the late acks that made a copy
needless, `catchup_copied` the copies made). Entries are remembered in the order they were
missed, so the ones due are the oldest.

Runs where the replicator runs (the thread that owns the sockets): `send(endpoint, frames) -> bool`
sends without blocking. It never blocks the write path and never holds payloads beyond one
request's round trip; entries beyond `lagging_max` per bookie are dropped from catch-up
(counted: they keep their quorum's copies).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import crc32c

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import NoSuchLedger

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (ledger id, entry id)


class CatchUp:
    def __init__(
        self,
        send: Callable[[str, list[Any]], bool],
        *,
        lagging_max: int = 100_000,
        in_flight_max: int = 16,
        timeout_s: float = 5.0,
        grace_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.clock = clock
        self.lagging_max = lagging_max
        self.in_flight_max = in_flight_max
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self._lagging: dict[str, collections.OrderedDict[Key, tuple[Any, list[str], float]]] = {}
        """Target -> missed entries, oldest first: (log, bookies that have it, missed at)."""
        self._alive: set[str] = set()
        self._requests: dict[int, tuple[str, str, Key, Any, float]] = {}
        """request id -> (stage "read"/"add", target endpoint, key, log, sent at)."""
        self._busy: dict[str, set[Key]] = collections.defaultdict(set)
        self._probe_at: dict[str, float] = {}
        """Target -> when to probe it next (while it has not answered since it missed)."""
        self.counters = dict.fromkeys(
            (
                "catchup_copied",
                "catchup_dropped",
                "catchup_lagging",
                "catchup_late_acks",
                "catchup_probes",
            ),
            0,
        )

    def missed(self, target: str, log_: Any, key: Key, sources: list[str]) -> None:
        lagging = self._lagging.setdefault(target, collections.OrderedDict())
        known = lagging.get(key)
        # missed again (recovery found it lacking): keep its place and time, oldest first
        lagging[key] = (log_, sources, known[2] if known else self.clock())
        self._alive.discard(target)
        if len(lagging) > self.lagging_max:
            lagging.popitem(last=False)
            self.counters["catchup_dropped"] += 1

    def acked(self, endpoint: str, key: Key, *, copied: bool = False) -> None:
        """`endpoint` answered EntryAdded for `key`: a late ack, or (`copied`) the add of a
        catch-up copy."""
        lagging = self._lagging.get(endpoint)
        if lagging and lagging.pop(key, None) is not None:
            self.counters["catchup_copied" if copied else "catchup_late_acks"] += 1
        self._busy[endpoint].discard(key)
        if lagging is not None:
            self._alive.add(endpoint)

    def owns(self, request_id: int) -> bool:
        return request_id in self._requests

    def on_reply(self, request_id: int, body: Any) -> None:
        """A reply to one of catch-up's own requests."""
        stage, target, key, log_, _ = self._requests.pop(request_id)
        if stage == "read" and isinstance(body, m.EntryRead) and body.found:
            payload = bytes(body.payload)
            add = m.AddEntry(key[0], key[1], log_.epoch, -1, crc32c.crc32c(payload), payload)
            rid = codec.next_request_id()
            if self._send(target, codec.encode(add, rid)):
                self._requests[rid] = ("add", target, key, log_, self.clock())
                return
        elif (stage == "read" and isinstance(body, m.EntryRead)) or (
            isinstance(body, m.ErrorReply) and body.code == NoSuchLedger.code
        ):  # nobody has it any more, or the log was truncated below it meanwhile
            self._lagging.get(target, {}).pop(key, None)
        elif stage == "add" and isinstance(body, m.EntryAdded):
            self.acked(target, key, copied=True)
            return
        self._busy[target].discard(key)  # an error: try again later

    def tick(self) -> None:
        """Expire stuck requests; start copies for bookies that answer again."""
        now = self.clock()
        for rid, (_, target, key, _, sent_at) in list(self._requests.items()):
            if now - sent_at > self.timeout_s:
                del self._requests[rid]
                self._busy[target].discard(key)
        self.counters["catchup_lagging"] = sum(len(v) for v in self._lagging.values())
        for target, lagging in list(self._lagging.items()):
            # a bookie that gets no new entries (an ensemble change left it out) never acks
            # anything by itself: probe it with one copy per timeout until it answers
            if (
                target not in self._alive
                and lagging
                and now >= self._probe_at.get(target, 0.0)
                and self._start(target, lagging, limit=1)  # 0 while nothing is due yet
            ):
                self._probe_at[target] = now + self.timeout_s
                self.counters["catchup_probes"] += 1
        for target in list(self._alive):
            lagging = self._lagging.get(target)
            if not lagging:
                self._alive.discard(target)
                self._lagging.pop(target, None)
                continue
            self._start(target, lagging)

    def _start(self, target: str, lagging: collections.OrderedDict, limit: int = 0) -> int:
        """Start copies of the oldest due entries, up to `limit` in flight; returns how many
        were started."""
        busy = self._busy[target]
        started = 0
        limit = limit or self.in_flight_max
        now = self.clock()
        gone: list[Key] = []
        for key, (log_, sources, missed_at) in lagging.items():
            if len(busy) >= limit or now - missed_at < self.grace_s:
                break  # the rest were missed later still: their own adds may yet land
            if key in busy:
                continue
            source = sources[hash(key) % len(sources)] if sources else None
            if key[0] not in log_.positions or source is None:
                gone.append(key)  # the ledger was truncated meanwhile, or nobody has it
                continue
            rid = codec.next_request_id()
            if self._send(source, codec.encode(m.ReadEntry(key[0], key[1], 0, False), rid)):
                self._requests[rid] = ("read", target, key, log_, now)
                busy.add(key)
                started += 1
        for key in gone:
            del lagging[key]
        return started
