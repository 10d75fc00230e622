"""A simulated world for the replicated log's protocol: one clock, one network, bookies on
FaultyDisks, and owners running the real protocol code (TESTING.md §2).

Everything runs on one thread, in simulated time, from one `random.Random(seed)`, so a run
is a pure function of its seed. The code under test is the production code with its I/O
injected: `BookieCore` (the bookie's request handling) over a real `Journal` on a
`FaultyDisk`; `ReplicatorCore` (the write path: quorums, resends, rollover, ensemble change,
catch-up) and `ReplicatedLog` (recovery: epoch CAS, fencing, last-entry search,
re-replication; metadata by compare-and-set) with the simulated clock, network and store.

Model:
- `World.at(delay, fn)` schedules; `run_until(done, deadline)` runs events in time order until
  `done()` or the deadline. Blocking calls of the code under test (a recovery's requests)
  run the world inside their wait, so everything else (the old owner's writes, crashes,
  other recoverers) goes on meanwhile.
- The network delivers each directed link's messages in order (one ZeroMQ connection),
  after a random delay, loses each with probability `drop` (a reset connection), and loses
  everything sent or in flight across a cut link or to a node that is down. A send across
  a cut link or to a node that is down reports "not connected" (ZeroMQ's IMMEDIATE).
- A bookie runs one group-commit turn a short random delay after the first request that
  arrives while idle (longer while `slow`). `crash()` is a power cut of its machine
  (FaultyDisk.crash: what was not fdatasync'd may be lost, torn or garbled); it may also
  happen in the middle of a commit (`crash_after`), and an fdatasync may fail with EIO (the
  bookie fail-stops). A crashed bookie restarts later and recovers its journal.
- The coordination store is an in-memory versioned compare-and-set store (values copied in
  and out, as a real store serializes them).
"""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    InvalidMessage,
    RequestTimeout,
    StorageError,
    error_from_code,
)
from streamvault.dataplane.log.bookie import BookieCore
from streamvault.dataplane.log.bookie_client import BookieClient
from streamvault.dataplane.log.journal import Journal, JournalConfig
from streamvault.dataplane.log.metadata import BadVersion, LogMetadata
from support.faulty_disk import FaultyDisk, SimulatedCrash

JOURNAL = JournalConfig(
    file_bytes=64 * 1024,
    commit_bytes_max=16 * 1024,
    piece_bytes=8 * 1024,
    files_recycled_max=1,
    direct=False,
    spare_thread=False,  # spares made inline: every disk call on the simulation's thread
    io_thread=False,  # the same disk calls in the same order (the journal sim runs both)
    compact_quiet_s=0,  # compaction never waits for the wall clock: the runs replay
)
JOURNAL_DIR = "/sim/journal"
EVENTS_MAX = 2_000_000
"""Events one run may execute at most (a bound on every loop of the simulation)."""


class World:
    """Simulated time and the event queue."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.executed = 0
        self.net = Net(self)
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now

    def note(self, text: str) -> None:
        text = re.sub(r" at 0x[0-9a-f]+", "", text)  # reprs of buffers: not part of a replay
        self.log.append(f"{self.now * 1000:9.3f}ms {text}")

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + max(0.0, delay), self._seq, fn))

    def run_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Run events until `done()` (True) or simulated time reaches `deadline` (False)."""
        while not done():
            if not self._events or self._events[0][0] > deadline:
                self.now = max(self.now, deadline)
                return done()
            when, _, fn = heapq.heappop(self._events)
            self.now = max(self.now, when)
            self.executed += 1
            if self.executed > EVENTS_MAX:
                raise AssertionError(f"simulation ran {EVENTS_MAX} events: a livelock?")
            fn()
        return True


class Net:
    """Per-link FIFO delivery with delay, loss, cut links and nodes that are down."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.nodes: dict[str, Any] = {}
        self.cut: set[frozenset[str]] = set()
        self.drop = 0.0
        self.delay_s = (0.00005, 0.0005)
        self.spike = 0.0
        """Probability that a message is delayed by up to 20 ms (a slow link)."""
        self._link_free: dict[tuple[str, str], float] = {}
        self.counters = {"sent": 0, "lost": 0, "refused": 0}

    def connected(self, a: str, b: str) -> bool:
        node = self.nodes.get(b)
        return node is not None and node.up and frozenset((a, b)) not in self.cut

    def send(self, src: str, dst: str, frames: Sequence[Any]) -> bool:
        if not self.connected(src, dst):
            self.counters["refused"] += 1
            return False
        world = self.world
        data = [bytes(codec._view(f)) for f in frames]
        self.counters["sent"] += 1
        if world.rng.random() < self.drop:
            self.counters["lost"] += 1
            return True
        low, high = self.delay_s
        delay = world.rng.uniform(low, high)
        if world.rng.random() < self.spike:
            delay += world.rng.uniform(0.001, 0.02)
        link = (src, dst)
        when = max(world.now + delay, self._link_free.get(link, 0.0))
        self._link_free[link] = when
        incarnation = self.nodes[dst].incarnation
        world.at(when - world.now, lambda: self._deliver(src, dst, data, incarnation))
        return True

    def _deliver(self, src: str, dst: str, data: list[bytes], incarnation: int) -> None:
        node = self.nodes.get(dst)
        if node is None or not node.up or node.incarnation != incarnation:
            self.counters["lost"] += 1
            return
        if frozenset((src, dst)) in self.cut:
            self.counters["lost"] += 1
            return
        node.receive(src, data)


class SimStore:
    """The coordination store: versioned records, compare-and-set, copies in and out."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[int, bytes]] = {}
        self._decoder = msgspec.json.Decoder(LogMetadata)
        self.cas_count = 0

    def get(self, key: str) -> tuple[LogMetadata | None, int]:
        record = self._records.get(key)
        if record is None:
            return None, 0
        return self._decoder.decode(record[1]), record[0]

    def cas(self, key: str, value: LogMetadata, expected_version: int) -> int:
        version = self._records.get(key, (0, b""))[0]
        if version != expected_version:
            raise BadVersion(
                f"coordination cas {key}: version {version} != expected {expected_version}",
                key=key,
            )
        self._records[key] = (version + 1, msgspec.json.encode(value))
        self.cas_count += 1
        return version + 1


class SimBookie:
    """A bookie machine: `BookieCore` over a `Journal` on its own FaultyDisk."""

    def __init__(self, world: World, name: str, bookie_id: str) -> None:
        self.world = world
        self.name = name
        self.bookie_id = bookie_id
        self.disk = FaultyDisk(world.rng.getrandbits(32))
        self.instance = f"{name}-{world.rng.getrandbits(64):016x}"
        self.up = False
        self.incarnation = 0
        self.slow = False
        self.journal: Journal | None = None
        self.core: BookieCore | None = None
        self._turn_due = False
        self.counters = {"crashes": 0, "crashes_in_commit": 0, "io_errors": 0, "restarts": 0}
        world.net.nodes[name] = self

    def start(self) -> bool:
        """Open (recover) the journal; False if the machine lost power meanwhile."""
        assert not self.up
        try:
            journal = Journal(JOURNAL_DIR, JOURNAL, disk=self.disk)
        except SimulatedCrash:
            self.disk.crash()
            self.world.note(f"{self.name}: power cut during journal recovery")
            return False
        self.disk.clear_faults()
        self.journal = journal
        self.core = BookieCore(
            journal, self._send, bookie_id=self.bookie_id, instance=self.instance
        )
        self.up = True
        self.incarnation += 1
        self._turn_due = False
        return True

    def crash(self, why: str = "power cut") -> None:
        if not self.up:
            return
        self.world.note(f"{self.name}: {why}")
        self.up = False
        self.counters["crashes"] += 1
        self.disk.clear_faults()
        self.disk.crash()
        if self.journal is not None:
            self.journal.close()  # its handles died with the crash: releases its buffer
        self.journal = self.core = None

    def wipe(self) -> None:
        """The disk is replaced: the machine goes down and comes back empty (a new instance
        of this bookie id)."""
        self.crash("disk replaced (wiped)")
        self.disk = FaultyDisk(self.world.rng.getrandbits(32))
        self.instance = f"{self.name}-{self.world.rng.getrandbits(64):016x}"

    def arm_crash(self, calls: int) -> None:
        """Lose power in the middle of the next disk calls (`calls` from now)."""
        if self.up:
            self.disk.crash_after(calls)

    def fail_next_sync(self) -> None:
        if self.up:
            self.disk.fail_next("fdatasync", 5)  # EIO

    def receive(self, src: str, frames: list[bytes]) -> None:
        assert self.core is not None
        try:
            self.core.receive(src.encode(), frames)
        except SimulatedCrash:
            self.counters["crashes_in_commit"] += 1
            self.crash("power cut while reading")
            return
        if not self._turn_due:
            self._turn_due = True
            low, high = (0.005, 0.05) if self.slow else (0.0001, 0.001)
            incarnation = self.incarnation
            self.world.at(self.world.rng.uniform(low, high), lambda: self._turn(incarnation))

    def _turn(self, incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return
        self._turn_due = False
        assert self.core is not None
        try:
            self.core.end_turn()
        except SimulatedCrash:
            self.counters["crashes_in_commit"] += 1
            self.crash("power cut in the middle of a commit")
        except StorageError as exc:  # fail-stop (exit 3); the supervisor restarts it
            self.counters["io_errors"] += 1
            self.crash(f"journal I/O error, fail-stop: {exc}")

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        self.world.net.send(self.name, peer.decode(), frames)


class SimClient(BookieClient):
    """`BookieClient` over the simulated network: each call waits by running the world
    (`call` is BookieClient's, over `call_many`)."""

    def __init__(self, world: World, name: str) -> None:  # no ZeroMQ context or sockets
        self.world = world
        self.name = name
        self.up = True
        self.incarnation = 1
        self._answers: dict[int, Any] = {}
        self._waiting: set[int] = set()
        world.net.nodes[name] = self

    def receive(self, src: str, frames: list[bytes]) -> None:
        try:
            header, body = codec.decode(frames)
        except InvalidMessage:
            return
        if header.request_id in self._waiting:
            self._waiting.discard(header.request_id)
            self._answers[header.request_id] = (
                error_from_code(body.code, body.message, body.fields)
                if isinstance(body, m.ErrorReply)
                else body
            )

    def _ask(self, endpoint: str, msg: Any, timeout_s: float) -> int:
        rid = codec.next_request_id()
        self._waiting.add(rid)
        frames = codec.encode(msg, rid, timeout_ms=int(timeout_s * 1000))
        self.world.net.send(self.name, endpoint, frames)
        return rid

    def call_many(
        self, endpoints: Sequence[str], msg: Any, *, needed: int, timeout_s: float
    ) -> dict[str, Any]:
        asked = {self._ask(e, msg, timeout_s): e for e in endpoints}
        answers = self._answers
        self.world.run_until(
            lambda: sum(1 for r in asked if r in answers) >= needed,
            self.world.now + timeout_s,
        )
        out: dict[str, Any] = {}
        for rid, endpoint in asked.items():
            self._waiting.discard(rid)
            out[endpoint] = answers.pop(
                rid, RequestTimeout(f"bookie {endpoint}: no answer in {timeout_s}s")
            )
        return out

    def read_entries(
        self, endpoint: str, ledger: int, first: int, count: int, timeout_s: float
    ) -> dict[int, Any]:
        asked = {
            self._ask(endpoint, m.ReadEntry(ledger, entry, 0, False), timeout_s): entry
            for entry in range(first, first + count)
        }
        answers = self._answers
        self.world.run_until(lambda: all(r in answers for r in asked), self.world.now + timeout_s)
        out: dict[int, Any] = {}
        for rid, entry in asked.items():
            self._waiting.discard(rid)
            if rid in answers:
                out[entry] = answers.pop(rid)
        return out

    def close(self) -> None:
        self._waiting.clear()
        self._answers.clear()
