"""The replicated durable log of one container, on an ensemble of bookies.

`ReplicatedLog` implements the same interface as `LocalDurableLog` (see __init__.py): the
container builds records in page-aligned buffers and submits them; `Replicator`
(replicator.py: one thread per worker, the counterpart of `Committer`) sends each record as
a ledger entry to the ledger's write quorum and hands completions back in submission order,
each once `ack_quorum` bookies have it durable and every earlier entry of the log is
complete.

Layout. Ledger ids are globally unique (`container_id << 32 | n`) because bookies are shared
by all containers. An entry is the sealed record (framing.py: self-identifying, CRC32C) up to
the end of its payload; its *virtual position* in the ledger is where it would sit in a local
ledger file (the sum of the aligned sizes of the records before it), so the container's read
index addresses replicated and local logs alike. Ledger metadata (state, last entry, ensemble
of bookie ids) changes only by compare-and-set in the coordination store.

Recovery (`recover`): bump the epoch by CAS (of two racing recoverers exactly one CAS wins;
a later one fences the earlier one in turn), then for each ledger left open fence it on the
ensemble with recovery reads: once `write_quorum - ack_quorum + 1` bookies are fenced, the
old owner can never again reach an ack quorum. The ledger ends at the first entry after the
largest known lac that is absent on that many bookies (no acked entry can be: it is on
`ack_quorum` bookies); every later-found entry is re-replicated to the responders before the
ledger is closed at it. Only a bookie still the *instance* the ledger recorded for it counts
as absent: one that came back with an empty disk under its old id would deny entries it
held (bookie_instance.py); its instance is asked when recovery begins and again after the
reads.
Closed ledgers are read from any replica, each record checked (CRC, ledger, entry), a bad
or missing copy read from another. A bookie that does not answer counts as down: read last,
not waited for beyond the quorum a step needs. Then each bookie that is up lists the entries
of the ledgers it holds, and what one lacks is handed to catch-up when the log starts.

It must never: close a ledger in metadata before its last entry is acknowledged (the
replicator rolls over only with nothing in flight); write metadata with a stale version (a
fenced owner's CAS fails and it stops); serve a copy that fails its record check.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import crc32c
import zmq

from streamvault.client.protocol import messages as m
from streamvault.client.protocol.crashpoints import crash_point
from streamvault.client.protocol.errors import (
    DataCorruption,
    Fenced,
    NoSuchLedger,
    ServiceUnavailable,
    StorageError,
    StreamVaultError,
)
from streamvault.client.protocol.limits import PROTOCOL_VERSION, PROTOCOL_VERSION_MIN
from streamvault.dataplane.log.bookie_client import BookieClient
from streamvault.dataplane.log.bookie_instance import InstanceRound
from streamvault.dataplane.log.framing import (
    RECORD_HEADER_BYTES,
    check_record,
    parse_header,
    record_bytes,
    seal_record,
)
from streamvault.dataplane.log.local_log import (
    BufferPool,
    LogConfig,
    LogLocation,
    RollOver,
    WriteBuffer,
)
from streamvault.dataplane.log.metadata import (
    LEDGER_ID_SHIFT,
    CoordinationStore,
    LedgerInfo,
    LogMetadata,
)

if TYPE_CHECKING:
    from streamvault.dataplane.log.replicator import ReplicatorCore

log = logging.getLogger(__name__)

LACKING_MAX = 100_000
"""Entries lacking copies that one recovery hands to catch-up at most (catch-up's own bound
per bookie is the same)."""
ENTRY_CACHE_BYTES_MAX = 32 * 1024 * 1024
"""Entries kept per log for `read` (the log is read only for bytes the cache lacks)."""
INSTANCE_ROUND_REUSE_S = 5.0
"""How long one worker's logs take the instance round another of them asked for (recovering
one after another: a bookie that does not answer costs its timeout once, not per log)."""
INSTANCE_TIMEOUT_S = 1.0
"""How long recovery waits for the bookies' instances (a bookie not answering in time is
unknown in new ledgers, and does not vouch for ledgers that recorded its instance)."""


@dataclass(frozen=True)
class ReplicationConfig:
    bookies: dict[str, str] = field(default_factory=dict)
    """Bookie id -> endpoint. Metadata names bookies by id, so endpoints may change."""
    ensemble: int = 1
    write_quorum: int = 1
    ack_quorum: int = 1
    add_timeout_s: float = 1.0
    """An entry not acknowledged by its quorum this long is sent again to the bookies that
    have not answered (adds are idempotent: same ledger, entry and bytes)."""
    recovery_timeout_s: float = 10.0
    bookie_failed_s: float = 2.0
    """A bookie that has not acknowledged entries this old, which the others did, is taken
    out of new ensembles (an ensemble change) where enough other bookies exist."""
    exclusion_s: float = 60.0
    """How long a failed bookie stays out of new ensembles."""
    read_window: int = 32
    """Entry reads in flight per bookie during recovery."""
    catchup_timeout_s: float = 5.0
    """A catch-up copy unanswered this long is tried again; a bookie that has not answered
    since it missed entries is probed with one copy this often (catchup.py)."""

    def __post_init__(self) -> None:
        if not 1 <= self.ack_quorum <= self.write_quorum <= self.ensemble:
            raise ValueError(
                f"replication: need 1 <= ack_quorum={self.ack_quorum} <= write_quorum="
                f"{self.write_quorum} <= ensemble={self.ensemble}"
            )
        if self.write_quorum != self.ensemble:
            raise ValueError(
                f"replication: ensemble={self.ensemble} > write_quorum={self.write_quorum} "
                "(striping) is not supported; use ensemble == write_quorum"
            )
        if len(self.bookies) < self.ensemble:
            raise ValueError(f"replication: {len(self.bookies)} bookies < ensemble={self.ensemble}")

    @property
    def fence_quorum(self) -> int:
        """Fenced bookies that leave the old owner short of an ack quorum."""
        return self.write_quorum - self.ack_quorum + 1


class _Ledger:
    """Write state of the open ledger (the replicator's side)."""

    __slots__ = ("info", "next_entry_id", "next_pos", "acked_entry_id")

    def __init__(self, info: LedgerInfo) -> None:
        self.info = info
        self.next_entry_id = 0
        self.next_pos = 0
        self.acked_entry_id = -1


class ReplicatedLog(RollOver):
    """A container's durable log on bookies (see module docstring)."""

    def __init__(
        self,
        *,
        key: str,
        container_id: int,
        store: CoordinationStore,
        replicator: ReplicatorCore,
        replication: ReplicationConfig,
        ctx: zmq.Context | None,
        config: LogConfig | None = None,
        client_factory: Callable[[], BookieClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
        instance_round: InstanceRound | None = None,
    ) -> None:
        """`instance_round`: shared by the logs of one worker (see InstanceRound)."""
        self.key = key
        self.container_id = container_id
        self.store = store
        self.replicator = replicator
        self.replication = replication
        self.ctx = ctx
        self._new_client = client_factory or (lambda: BookieClient(ctx))
        """Synchronous bookie requests (recovery, reads); the simulation injects its own."""
        self.clock = clock
        self.config = config or LogConfig()
        r = replication
        self.mode = f"replicated E={r.ensemble} Qw={r.write_quorum} Qa={r.ack_quorum}"
        self.meta = LogMetadata()
        self.meta_version = 0
        self.epoch = 0
        self.ledger: _Ledger | None = None
        self.positions: dict[int, array] = {}
        self.pool = BufferPool(key, self.config)
        self._entries: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()
        self._entry_bytes = 0
        self._entries_lock = threading.Lock()
        self._clients = threading.local()
        self.excluded: dict[str, float] = {}
        """Bookie id -> until when it stays out of new ensembles (the replicator's side)."""
        self.instances: dict[str, str] = {}
        """Bookie id -> its instance when this owner recovered (recorded in new ledgers)."""
        self.lacking: list[tuple[str, tuple[int, int], list[str]]] = []
        """What recovery found bookies lack (`_find_lacking`), handed to catch-up by `start`."""
        self._instance_round = instance_round
        self._scan_seen: dict[str, str] | None = None
        """The instances `scan_back` asked for (`recover` uses them instead of asking again)."""
        self._down: set[str] = set()
        """Endpoints that did not answer the last instance round, or a read in time, since
        (any thread; see `_mark_down`)."""
        self.change_ensemble = False
        """Set when a bookie of the open ledger failed and a spare exists: the next record
        rolls the log over onto a new ensemble (the replicator's side)."""
        self.roll_requested = False
        """Set by `roll_over` (the worker's side): the next record starts a new ledger."""

    # --- recovery (main thread, before the replicator starts) -------------------------
    def recover(self) -> Iterator[tuple[LogLocation, memoryview]]:
        meta, version = self.store.get(self.key)
        meta = meta or LogMetadata(next_ledger_id=(self.container_id << LEDGER_ID_SHIFT) + 1)
        meta.epoch += 1
        version = self.store.cas(self.key, meta, version)
        self.epoch = meta.epoch
        client = self._new_client()
        try:
            bookies = self.replication.bookies
            seen = self._scan_seen  # asked just before by `scan_back`, if it ran: before any fence
            self._scan_seen = None
            if seen is None:
                seen = self._first_instances(client)
            self.instances = {b: seen[e] for b, e in bookies.items() if seen.get(e)}
            for info in meta.ledgers:
                if info.state == "open":
                    info.last_entry_id = self._recover_open(client, info, seen)
                    info.state = "closed"
                yield from self._read_ledger(client, info)
            self.lacking = self._find_lacking(client, meta.ledgers)
        finally:
            client.close()
        meta.ledgers = [i for i in meta.ledgers if i.last_entry_id >= 0]
        self.meta_version = self.store.cas(self.key, meta, version)
        self.meta = meta
        self._collect_orphans()

    def _find_lacking(
        self, client: BookieClient, ledgers: list[LedgerInfo]
    ) -> list[tuple[str, tuple[int, int], list[str]]]:
        """The entries of the (now closed) ledgers that bookies of their ensembles which are
        up lack, with the bookies that hold each: a bookie that missed entries while this
        log's previous owner ran (its catch-up state died with it) or that came back with a
        replaced disk. Catch-up copies them once the log starts (`start`), so every entry
        the log names gets its write quorum's copies again. Best effort: a bookie that does
        not answer is left as it is; beyond `LACKING_MAX` entries the rest wait for the next
        recovery."""
        lacking: list[tuple[str, tuple[int, int], list[str]]] = []
        for info in ledgers:
            if info.last_entry_id < 0:
                continue
            endpoints = [e for e in self.endpoints(info) if not self._is_down(e)]
            if not endpoints:
                continue
            replies = client.call_many(
                endpoints,
                m.ListEntries(info.ledger_id),
                needed=len(endpoints),
                timeout_s=self.replication.recovery_timeout_s,
            )
            held = {
                e: _entry_set(x.ranges, info.last_entry_id)
                for e, x in replies.items()
                if isinstance(x, m.EntryRanges)
            }
            for target, entries in held.items():
                for entry in range(info.last_entry_id + 1):
                    if entry in entries:
                        continue
                    sources = [e for e, other in held.items() if entry in other]
                    if sources:  # else every copy is on bookies that did not answer
                        lacking.append((target, (info.ledger_id, entry), sources))
                    if len(lacking) >= LACKING_MAX:
                        log.warning("log=%s over %d entries lack copies", self.key, LACKING_MAX)
                        return lacking
        if lacking:
            log.info("log=%s %d entries lack copies on bookies: copying", self.key, len(lacking))
        return lacking

    def _collect_orphans(self) -> None:
        """Delete this container's ledgers that bookies hold but metadata does not name: a
        crash between truncation's metadata update and its deletes, a bookie that was down
        when a delete was sent, or a ledger opened and emptied by recovery. Best effort: a
        bookie that does not answer is asked again at the next recovery."""
        low = self.container_id << LEDGER_ID_SHIFT
        known = {i.ledger_id for i in self.meta.ledgers}
        client = self._new_client()
        try:
            endpoints = list(self.replication.bookies.values())
            listed = client.call_many(
                endpoints,
                m.ListLedgers(low, self.meta.next_ledger_id),
                needed=self._waited_for(endpoints, 1),
                timeout_s=self.replication.recovery_timeout_s,
            )
            for endpoint, reply in listed.items():
                if not isinstance(reply, m.LedgerIds):
                    log.warning("log=%s orphan listing at %s: %s", self.key, endpoint, reply)
                    continue
                for ledger_id in set(reply.ids) - known:
                    client.call(
                        endpoint, m.DeleteLedger(ledger_id), self.replication.recovery_timeout_s
                    )
                    log.info("log=%s deleted orphan ledger=%d at %s", self.key, ledger_id, endpoint)
        except StreamVaultError as exc:
            log.warning("log=%s orphan collection incomplete: %s", self.key, exc)
        finally:
            client.close()

    def scan_back(self) -> Iterator[Iterator[memoryview]]:
        """The log's payloads, changing nothing, in runs: the newest run first, each run in
        log order. Recovery's first pass looks for the last checkpoint and stops after
        the first run that holds one, so it reads from the end of the log instead of all of
        it. An open ledger is one run (read while any bookie has the next entry); a closed
        ledger is read from its last entry back, `read_window` entries per run. Take each
        run before asking for the next."""
        meta, _ = self.store.get(self.key)
        client = self._new_client()
        window = self.replication.read_window
        try:
            # who is up; `recover`, which comes next, takes these instances as its own
            self._scan_seen = self._first_instances(client)
            for info in reversed((meta or LogMetadata()).ledgers):
                if info.state == "open":
                    yield (view for _, view in self._read_ledger(client, info, upto_missing=True))
                    continue
                endpoints = self.endpoints(info)
                stop = info.last_entry_id + 1
                while stop > 0:
                    first = max(0, stop - window)
                    batch, unanswered = self._read_batch(
                        client, endpoints, info.ledger_id, first, stop - first
                    )
                    if len(batch) < stop - first:
                        self._no_valid_copy(info, first + len(batch), unanswered)
                    yield iter([memoryview(r)[RECORD_HEADER_BYTES:] for r in batch])
                    stop = first
        finally:
            client.close()

    def endpoints(self, info: LedgerInfo) -> list[str]:
        """The endpoints of the ledger's ensemble (bookies are named by id in metadata)."""
        return [self.replication.bookies[b] for b in info.ensemble if b in self.replication.bookies]

    def _first_instances(self, client: BookieClient) -> dict[str, str]:
        """The instances of all bookies before recovery fences anything: the worker's
        shared round if it is fresh (InstanceRound), else asked."""
        endpoints = list(self.replication.bookies.values())
        shared = self._instance_round
        seen = shared.get(endpoints) if shared is not None else None
        if seen is None:
            seen = self._instances(client, endpoints)
            if shared is not None:
                shared.put(endpoints, seen)
        else:
            self._note_answers(endpoints, seen)
        return seen

    def _instances(self, client: BookieClient, endpoints: list[str]) -> dict[str, str]:
        """Endpoint -> the instance its bookie reports (absent: no answer in time)."""
        hello = m.Hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION, f"log {self.key}")
        timeout = min(self.replication.recovery_timeout_s, INSTANCE_TIMEOUT_S)
        replies = client.call_many(endpoints, hello, needed=len(endpoints), timeout_s=timeout)
        seen = {e: x.instance for e, x in replies.items() if isinstance(x, m.HelloReply)}
        self._note_answers(endpoints, seen)
        return seen

    # --- bookies that do not answer -----------------------------------------------------
    def _note_answers(self, endpoints: list[str], answered: dict[str, str]) -> None:
        """After an instance round: who answered is up, who did not counts as down."""
        for endpoint in endpoints:
            if endpoint in answered:
                self._down.discard(endpoint)
            else:
                self._mark_down(endpoint)

    def _mark_down(self, endpoint: str) -> None:
        """A bookie that did not answer an instance round or a read in time counts as down
        until it answers an instance round again: reads ask it last, and recovery's fence
        and orphan listing do not wait for it beyond the quorum they need (they used to wait
        `recovery_timeout_s` for it at each step, and at every read window: minutes)."""
        if endpoint not in self._down:
            log.info("log=%s bookie %s counts as down", self.key, endpoint)
            self._down.add(endpoint)

    def _is_down(self, endpoint: str) -> bool:
        return endpoint in self._down

    def _waited_for(self, endpoints: list[str], quorum: int) -> int:
        """How many answers of `endpoints` a step waits for: every bookie not down, and at
        least the `quorum` it needs (then a down one may still make it, in time)."""
        up = sum(1 for e in endpoints if not self._is_down(e))
        return min(len(endpoints), max(quorum, up))

    def _witnesses(self, info: LedgerInfo, seen: dict[str, str]) -> tuple[dict[str, str], list]:
        """The ensemble endpoints whose "not found" counts for `info`, given the instances
        `seen` (endpoint -> instance): each still the instance the ledger recorded for it (or
        recorded unknown), with the instance seen; and the bookies left out, which lost data
        the ledger may hold (bookie_instance.py)."""
        recorded = dict(zip(info.ensemble, info.instances, strict=False))
        bookies = self.replication.bookies
        endpoints = {bookies[b]: b for b in info.ensemble if b in bookies}
        witnesses, left_out = {}, []
        for endpoint, bookie in endpoints.items():
            expected = recorded.get(bookie, "")
            if not expected or seen.get(endpoint) == expected:
                witnesses[endpoint] = seen.get(endpoint, "")
            else:
                left_out.append((bookie, seen.get(endpoint, "no answer")))
        return witnesses, left_out

    def _recover_open(self, client: BookieClient, info: LedgerInfo, seen: dict[str, str]) -> int:
        """Fence the ledger on enough bookies and find (and re-replicate) its last entry.
        An entry is taken as never acknowledged only once `fence_quorum` witnesses (bookies
        that are the instance the ledger recorded) answer "not found": an acknowledged entry
        has `ack_quorum` copies, so at most `write_quorum - ack_quorum` of them lack it.
        `seen` are the instances asked for when recovery began; they are asked again once
        the reads are done, so every answer in between is from the instance counted."""
        r = self.replication
        endpoints = self.endpoints(info)
        witnesses, left_out = self._witnesses(info, seen)
        fence = m.ReadEntry(info.ledger_id, m.NO_ENTRY, self.epoch, True)
        results = client.call_many(
            endpoints,
            fence,
            needed=self._waited_for(endpoints, r.fence_quorum),
            timeout_s=r.recovery_timeout_s,
        )
        fenced = {e: s for e, s in results.items() if isinstance(s, m.EntryRead)}
        for result in results.values():
            if isinstance(result, Fenced):
                raise result  # fenced at a higher epoch: someone recovered after us
            if isinstance(result, NoSuchLedger):
                self._check_still_owner(info.ledger_id)  # a newer owner truncated it
        if len(fenced) < r.fence_quorum:
            raise ServiceUnavailable(
                f"log {self.key}: fenced ledger {info.ledger_id} on {len(fenced)} bookies < "
                f"{r.fence_quorum} needed ({results})",
                ledger=info.ledger_id,
            )
        entry = max(s.lac for s in fenced.values()) + 1
        while True:
            reads = client.call_many(
                list(fenced),
                m.ReadEntry(info.ledger_id, entry, self.epoch, True),
                needed=len(fenced),
                timeout_s=r.recovery_timeout_s,
            )
            have = {e: x for e, x in reads.items() if isinstance(x, m.EntryRead) and x.found}
            absent = sum(
                1
                for e, x in reads.items()
                if e in witnesses and isinstance(x, m.EntryRead) and not x.found
            )
            if not have:
                if absent >= r.fence_quorum:
                    break
                raise ServiceUnavailable(
                    f"log {self.key}: cannot tell whether entry {entry} of ledger "
                    f"{info.ledger_id} was acknowledged ({reads}; bookies that lost their "
                    f"data since the ledger was made, not counted: {left_out})",
                    ledger=info.ledger_id,
                )
            record = bytes(next(iter(have.values())).payload)
            self._check(record, info.ledger_id, entry)
            lacking = [e for e in fenced if e not in have]
            if len(have) < r.ack_quorum and lacking:
                self._replicate(client, info.ledger_id, entry, record, lacking, len(have))
            entry += 1
        again = self._instances(client, [e for e in witnesses if witnesses[e]])
        changed = [e for e in witnesses if witnesses[e] and again.get(e) != witnesses[e]]
        if changed:  # its answers may be a new instance's: decide again, from the start
            raise ServiceUnavailable(
                f"log {self.key}: bookies {changed} restarted as a new instance (or stopped "
                f"answering) while ledger {info.ledger_id} was recovered",
                ledger=info.ledger_id,
            )
        log.info(
            "log=%s epoch=%d recovered ledger=%d last_entry=%d fenced_on=%d",
            self.key,
            self.epoch,
            info.ledger_id,
            entry - 1,
            len(fenced),
        )
        return entry - 1

    def _replicate(
        self, client: BookieClient, ledger: int, entry: int, record: bytes, to: list[str], have: int
    ) -> None:
        add = m.AddEntry(ledger, entry, self.epoch, -1, crc32c.crc32c(record), record)
        results = client.call_many(
            to, add, needed=len(to), timeout_s=self.replication.recovery_timeout_s
        )
        stored = sum(1 for x in results.values() if isinstance(x, m.EntryAdded))
        if have + stored < self.replication.ack_quorum:
            raise ServiceUnavailable(
                f"log {self.key}: entry {entry} of ledger {ledger} on {have + stored} "
                f"bookies < ack_quorum={self.replication.ack_quorum} ({results})"
            )

    def _read_ledger(
        self, client: BookieClient, info: LedgerInfo, *, upto_missing: bool = False
    ) -> Iterator[tuple[LogLocation, memoryview]]:
        endpoints = self.endpoints(info)
        last = info.last_entry_id
        positions = array("q")
        pos = 0
        entry = 0
        window = self.replication.read_window
        while upto_missing or entry <= last:
            count = window if upto_missing else min(window, last - entry + 1)
            batch, unanswered = self._read_batch(
                client, endpoints, info.ledger_id, entry, count, ask_down=not upto_missing
            )
            for record in batch:
                header = parse_header(memoryview(record), 0)
                assert header is not None
                positions.append(pos)
                view = memoryview(record)[RECORD_HEADER_BYTES:]
                yield LogLocation(info.ledger_id, pos, entry), view
                pos += record_bytes(header.payload_bytes)
                entry += 1
            if len(batch) < count:
                if upto_missing:
                    break
                self._no_valid_copy(info, entry, unanswered)
        self.positions[info.ledger_id] = positions

    def _no_valid_copy(self, info: LedgerInfo, entry: int, unanswered: list[str]) -> NoReturn:
        """Raise what it means that no bookie gave a valid copy of an entry of a ledger the
        metadata names: ServiceUnavailable if some did not answer (unreachable is not
        absent: try again), Fenced if a newer owner has the log (its truncation may have
        deleted the ledger), else DataCorruption (every bookie answered: the copies are
        gone or bad)."""
        if unanswered:
            raise ServiceUnavailable(
                f"log {self.key}: entry {entry} of ledger {info.ledger_id}: no valid copy from "
                f"the bookies that answered, {unanswered} did not",
                ledger=info.ledger_id,
                entry=entry,
            )
        self._check_still_owner(info.ledger_id)
        raise DataCorruption(
            f"log {self.key}: entry {entry} of ledger {info.ledger_id} (last entry "
            f"{info.last_entry_id}) has no valid copy on any bookie of {info.ensemble}",
            ledger=info.ledger_id,
            entry=entry,
        )

    def _check_still_owner(self, ledger_id: int) -> None:
        """Raise Fenced if another owner has taken the log over since this one's epoch
        (its truncation may have deleted what this one still reads)."""
        meta, _ = self.store.get(self.key)
        if meta is not None and meta.epoch != self.epoch:
            raise Fenced(
                f"log {self.key}: taken over at epoch {meta.epoch} while epoch {self.epoch} "
                f"read ledger {ledger_id}",
                epoch=self.epoch,
                fenced_epoch=meta.epoch,
            )

    def _read_batch(
        self,
        client: BookieClient,
        endpoints: list[str],
        ledger: int,
        first: int,
        count: int,
        *,
        ask_down: bool = True,
    ) -> tuple[list[bytes], list[str]]:
        """Entries first..first+count-1, as far as some bookie has a valid copy of each: all
        asked of one bookie at once (pipelined), a missing or bad copy asked of the others.
        Also returns, for the first entry without a valid copy, the bookies that did not
        answer for it (empty: every bookie said absent or had a bad copy). Bookies that count
        as down are asked last, or (`ask_down` False: `scan_back` reading an open ledger up to its
        first missing entry, where an acknowledged entry is on Qa bookies, so on one that is
        up while fewer than Qa are down) not at all; one that does not answer in time counts
        as down."""
        timeout = self.replication.recovery_timeout_s
        endpoints = sorted(endpoints, key=self._is_down)  # stable: the ensemble's order
        replies: dict[int, Any] = {}
        if endpoints:
            replies = client.read_entries(endpoints[0], ledger, first, count, timeout)
            if len(replies) < count:
                self._mark_down(endpoints[0])
        out: list[bytes] = []
        for entry in range(first, first + count):
            unanswered: list[str] = []
            record = self._valid(replies.get(entry), endpoints[:1], ledger, entry, unanswered)
            for endpoint in endpoints[1:] if record is None else ():
                if not ask_down and self._is_down(endpoint):
                    continue
                reply = client.read_entries(endpoint, ledger, entry, 1, timeout).get(entry)
                if reply is None:
                    self._mark_down(endpoint)
                record = self._valid(reply, [endpoint], ledger, entry, unanswered)
                if record is not None:
                    break
            if record is None:
                return out, unanswered
            out.append(record)
        return out, []

    def _valid(
        self, reply: Any, where: list[str], ledger: int, entry: int, unanswered: list[str]
    ) -> bytes | None:
        """The record of a read reply if it is a valid copy; None otherwise, adding `where`
        to `unanswered` unless the bookie answered (absent, or a bad copy)."""
        if not isinstance(reply, m.EntryRead):
            if not isinstance(reply, DataCorruption):  # no answer, or an error: not "absent"
                unanswered.extend(where)
            if reply is not None:
                log.warning("log=%s read %d/%d from %s: %s", self.key, ledger, entry, where, reply)
            return None
        if not reply.found:
            return None
        record = bytes(reply.payload)
        try:
            self._check(record, ledger, entry)
        except DataCorruption as exc:  # a bad copy: never served, another replica is asked
            log.error("log=%s bad copy at %s: %s", self.key, where, exc)
            return None
        return record

    def _check(self, record: bytes, ledger: int, entry: int) -> None:
        view = memoryview(record)
        header = parse_header(view, 0)
        if (
            header is None
            or header.ledger_id != ledger
            or header.entry_id != entry
            or not check_record(view, 0, header)
            or RECORD_HEADER_BYTES + header.payload_bytes != len(record)
        ):
            raise DataCorruption(
                f"log {self.key}: entry {entry} of ledger {ledger} fails its record check",
                ledger=ledger,
                entry=entry,
            )

    # --- ledgers (at start, then by the replicator at rollover) ---------------------------
    def start(self) -> None:
        self._open_next_ledger()
        if self.lacking:
            self.replicator.catch_up(self, self.lacking)
            self.lacking = []

    def _open_next_ledger(self) -> None:
        meta = self.meta
        old = self.ledger
        if old is not None:
            old.info.state, old.info.last_entry_id = "closed", old.acked_entry_id
        ensemble = self.choose_ensemble(meta.next_ledger_id)
        instances = [self.instances.get(b, "") for b in ensemble]
        info = LedgerInfo(meta.next_ledger_id, "open", ensemble=ensemble, instances=instances)
        meta.next_ledger_id += 1
        meta.ledgers.append(info)
        self.meta_version = self.store.cas(self.key, meta, self.meta_version)
        self.positions[info.ledger_id] = array("q")
        self.ledger = _Ledger(info)
        self.change_ensemble = self.roll_requested = False
        log.info(
            "log=%s epoch=%d opened ledger=%d ensemble=%s",
            self.key,
            self.epoch,
            info.ledger_id,
            ensemble,
        )

    def truncate_before(self, ledger_id: int) -> None:
        self.replicator.run_task(self, lambda: self._truncate(ledger_id))

    def _truncate(self, ledger_id: int) -> list[int]:
        current = self.ledger.info.ledger_id if self.ledger is not None else None
        doomed = [
            i
            for i in self.meta.ledgers
            if i.ledger_id < ledger_id and i.state == "closed" and i.ledger_id != current
        ]
        if not doomed:
            return []
        self.meta.ledgers = [i for i in self.meta.ledgers if i not in doomed]
        # metadata first: never metadata naming a ledger some bookie deleted
        self.meta_version = self.store.cas(self.key, self.meta, self.meta_version)
        crash_point("truncate_after_meta")
        for info in doomed:
            self.replicator.delete_ledger(info.ledger_id, self.endpoints(info))
        ids = [i.ledger_id for i in doomed]
        log.info("log=%s truncated ledgers=%s", self.key, ids)
        return ids

    def forget_ledgers(self, ledger_ids: list[int]) -> None:
        for ledger_id in ledger_ids:
            self.positions.pop(ledger_id, None)
        with self._entries_lock:
            for key in [k for k in self._entries if k[0] in ledger_ids]:
                self._entry_bytes -= len(self._entries.pop(key))

    # --- write path (main thread) ------------------------------------------------------
    def acquire_buffer(self, payload_bytes: int) -> WriteBuffer | None:
        return self.pool.acquire(payload_bytes)

    @property
    def in_flight(self) -> int:
        return self.pool.in_flight

    def submit(self, buffer: WriteBuffer, payload_bytes: int, token: Any) -> None:
        self.pool.submitted()
        self.replicator.submit(self, buffer, payload_bytes, token)

    def release(self, buffer: WriteBuffer) -> None:
        self.pool.release(buffer)

    # --- the replicator's side (the worker's loop, or the replicator's own thread) ----
    def choose_ensemble(self, ledger_id: int) -> list[str]:
        """E bookies for a new ledger, spread by container and ledger, leaving out bookies
        excluded as failed while enough others exist."""
        names = sorted(self.replication.bookies)
        now = self.clock()
        healthy = [n for n in names if self.excluded.get(n, 0.0) <= now]
        pool = healthy if len(healthy) >= self.replication.ensemble else names
        first = (self.container_id + ledger_id) % len(pool)
        return [pool[(first + i) % len(pool)] for i in range(self.replication.ensemble)]

    def exclude(self, bookie: str) -> bool:
        """Take a failed bookie out of new ensembles; True if the open ledger should roll
        over onto an ensemble without it (a spare exists)."""
        self.excluded[bookie] = self.clock() + self.replication.exclusion_s
        ledger = self.ledger
        return (
            ledger is not None
            and bookie in ledger.info.ensemble
            and bookie not in self.choose_ensemble(self.meta.next_ledger_id)
        )

    def needs_rollover(self, payload_bytes: int) -> bool:
        ledger = self.ledger
        assert ledger is not None, "start() not called"
        return ledger.next_entry_id > 0 and (
            ledger.next_pos + record_bytes(payload_bytes) > self.config.ledger_bytes
            or self.change_ensemble
            or self.roll_requested
        )

    def seal(self, buffer: WriteBuffer, payload_bytes: int) -> tuple[LogLocation, memoryview]:
        """Assign the next entry of the open ledger; return its location and wire bytes."""
        ledger = self.ledger
        assert ledger is not None
        entry_id = ledger.next_entry_id
        seal_record(
            buffer.view,
            payload_bytes,
            ledger_id=ledger.info.ledger_id,
            entry_id=entry_id,
            epoch=self.epoch,
            lac=ledger.acked_entry_id,
        )
        location = LogLocation(ledger.info.ledger_id, ledger.next_pos, entry_id)
        self.positions[ledger.info.ledger_id].append(ledger.next_pos)
        ledger.next_entry_id += 1
        ledger.next_pos += record_bytes(payload_bytes)
        return location, buffer.view[: RECORD_HEADER_BYTES + payload_bytes]

    # --- read path (any thread) --------------------------------------------------------
    def read(self, ledger_id: int, position: int, length: int) -> bytes:
        positions = self.positions.get(ledger_id)
        if not positions:
            raise StorageError(f"log {self.key}: no ledger {ledger_id} to read")
        entry = bisect_right(positions, position) - 1
        if entry < 0:
            raise StorageError(f"log {self.key}: position {position} before ledger {ledger_id}")
        record = self._entry(ledger_id, entry)
        offset = position - positions[entry]
        if offset + length > len(record):
            raise StorageError(
                f"log {self.key}: read of ledger {ledger_id} at {position}+{length} "
                f"is outside entry {entry}"
            )
        return record[offset : offset + length]

    def _entry(self, ledger_id: int, entry: int) -> bytes:
        key = (ledger_id, entry)
        with self._entries_lock:
            record = self._entries.get(key)
            if record is not None:
                self._entries.move_to_end(key)
                return record
        info = next((i for i in self.meta.ledgers if i.ledger_id == ledger_id), None)
        if info is None:
            raise StorageError(f"log {self.key}: ledger {ledger_id} is not in the log")
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = self._new_client()
        batch, unanswered = self._read_batch(client, self.endpoints(info), ledger_id, entry, 1)
        if not batch:
            self._no_valid_copy(info, entry, unanswered)
        record = batch[0]
        with self._entries_lock:
            self._entries[key] = record
            self._entry_bytes += len(record)
            while self._entry_bytes > ENTRY_CACHE_BYTES_MAX and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._entry_bytes -= len(old)
        return record

    def close(self) -> None:
        client = getattr(self._clients, "client", None)
        if client is not None:
            client.close()
        self.pool.close()


def _entry_set(ranges: list[tuple[int, int]], last: int) -> set[int]:
    """The entry ids 0..last that (first, last) `ranges` cover."""
    out: set[int] = set()
    for first, stop in ranges:
        out.update(range(max(0, first), min(stop, last) + 1))
    return out
