"""The bookie: a log-replica process that stores ledger entries in its journal.

One ZeroMQ ROUTER socket serves ledger clients (the containers' replicated logs):

- `AddEntry` -> `EntryAdded` once the entry is durable (its journal commit fdatasync'd).
  The payload's CRC32C is checked before the entry is journaled, so a damaged transfer is
  never stored; an add whose epoch is below the ledger's fence epoch gets `Fenced`.
- `ReadEntry` -> `EntryRead` with the ledger's durable state (last entry, lac, fenced) and
  the entry if this bookie holds it. With `fence` the ledger is first fenced at the
  request's epoch, durably: the reply waits for the fence's commit, so once a recoverer has
  its reply the old owner can no longer be acknowledged by this bookie (recovery reads
  fence, as the fence itself does).
- `DeleteLedger` -> `Done` once the delete marker is durable.
- `ListLedgers` -> `LedgerIds` (the ledgers held in an id range: orphan collection).
- `ListEntries` -> `EntryRanges` (the entries of a ledger held durably: recovery copies
  what a bookie lacks to it).
- `GetStatus` -> `Status` with this bookie's counters (commits, syncs, adds, triggers).

Group commit: each turn drains up to `drain_max` messages, queues their records, commits
the journal once (one fdatasync for every client's entries of the turn; counted by
trigger), then answers. After answering, the turn lets the journal take one compaction
step (journal.py: live records of an old file copied forward, so one idle ledger cannot
pin every journal file; a no-op while none is due). While a commit's fdatasync runs,
requests queue in the socket, so the next turn takes them all. Replies to reads and fences
are computed after the commit, so they only ever describe durable state.

An add or fence below the epoch its container was last fenced at (container_fences.py) is
refused with `Fenced`, even for a ledger the bookie no longer (or never) held; an add or
fence to a deleted ledger gets `NoSuchLedger`.

`BookieCore` is all of the above without sockets (the protocol simulation drives it over a
simulated network); `Bookie` is the process: a ROUTER socket and a heartbeat around it.

Fail-stop: an I/O error from the journal ends the process (exit code 3) without another
reply; its supervisor restarts it and the journal's recovery decides what was durable.
It must never: acknowledge an entry before its commit returned, accept an add below a
ledger's fence epoch (pending fences count), or lower a fence epoch.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import crc32c
import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    DataCorruption,
    Fenced,
    InternalError,
    InvalidArgument,
    InvalidMessage,
    NoSuchLedger,
    StorageError,
    UnsupportedVersion,
)
from streamvault.client.protocol.latency import LatencyWindow, summaries
from streamvault.client.protocol.limits import (
    INVALID_MESSAGES_BEFORE_DISCONNECT,
)
from streamvault.dataplane.log import bookie_instance
from streamvault.dataplane.log.container_fences import ContainerFences
from streamvault.dataplane.log.journal import Journal, JournalConfig
from streamvault.dataplane.log.metadata import LEDGER_ID_SHIFT

log = logging.getLogger(__name__)

EXIT_IO_ERROR = 3
PEERS_TRACKED_MAX = 10_000
"""Peers whose invalid-message counts are remembered (forgotten whole beyond this)."""


@dataclass(frozen=True)
class BookieConfig:
    data_dir: str
    bind: str = "tcp://127.0.0.1:*"
    bookie_id: str = "0"
    controller: str = ""
    journal: JournalConfig = field(default_factory=JournalConfig)
    drain_max: int = 4096
    """Messages taken per turn (one journal commit covers all of them)."""
    heartbeat_s: float = 1.0

    def __post_init__(self) -> None:
        if self.drain_max <= 0:
            raise ValueError(f"BookieConfig: drain_max={self.drain_max} must be > 0")


class BookieCore:
    """The bookie's request handling, without sockets or clocks (sans-I/O): the process
    (`Bookie`) feeds it the requests it receives and sends what it emits; the protocol
    simulation (tests/dataplane/log/test_quorum_sim.py) does the same over a simulated
    network and disk. `send(peer, frames)` must not block."""

    def __init__(
        self,
        journal: Journal,
        send: Callable[[bytes, list[Any]], None],
        *,
        bookie_id: str = "0",
        instance: str = "",
        status: Callable[[], m.ProcessInfo] | None = None,
    ) -> None:
        self.journal = journal
        self.instance = instance
        self.send = send
        self.bookie_id = bookie_id
        self.status = status
        self.incarnation = uuid.uuid4().hex
        self.pending_fences: dict[int, int] = {}
        self.container_fences = ContainerFences(journal.directory, journal.disk)
        for ledger_id in journal.ledgers():  # fences the journal holds count too
            epoch = journal.fenced_epoch(ledger_id)
            if epoch is not None:
                self.container_fences.raise_to(ledger_id >> LEDGER_ID_SHIFT, epoch)
        self.container_fences.persist()
        self.invalid_counts: dict[bytes, int] = {}
        self.counters = {"adds": 0, "reads": 0, "fenced_rejects": 0, "crc_rejects": 0}
        self._after_commit: list[tuple[bytes, int, m.ReadEntry]] = []
        self.latency = {"turn": LatencyWindow()}
        """Each turn the process (`Bookie`) times: drain, commit (its pwrite and fdatasync),
        answer; `info` reports it with the journal's disk calls."""

    def end_turn(self) -> None:
        """Commit what this turn's requests queued (one group commit), then answer them:
        adds once durable, reads and fences describing durable state only."""
        replies: list[tuple[bytes, list[Any]]] = []
        if self.journal.pending():
            for token in self.journal.commit():
                if token is not None:
                    replies.append(token)
        self.container_fences.persist()  # before any fence of this turn is answered
        self.pending_fences.clear()
        after_commit, self._after_commit = self._after_commit, []
        for peer, rid, read in after_commit:
            replies.append((peer, self._read(rid, read)))
        for peer, frames in replies:
            self.send(peer, frames)
        self.journal.compact_step()  # between turns: its commit holds no client's record

    def receive(self, peer: bytes, body: list[Any]) -> None:
        """One request of this turn (answered at once, or at `end_turn`)."""
        rid = 0
        try:
            header, msg = codec.decode(body)
            rid = header.request_id
            self.invalid_counts.pop(peer, None)
            if isinstance(msg, m.AddEntry):
                self._add(peer, rid, msg)
            elif isinstance(msg, m.ReadEntry):
                if msg.fence:
                    self._fence(msg.ledger_id, msg.epoch)
                self._after_commit.append((peer, rid, msg))
            elif isinstance(msg, m.DeleteLedger):
                self._delete(peer, rid, msg)
            elif isinstance(msg, m.Hello):
                self.send(peer, self._hello(rid, msg))
            elif isinstance(msg, m.ListLedgers):
                ids = [i for i in self.journal.ledgers() if msg.low <= i < msg.high]
                self.send(peer, codec.encode_reply(m.LedgerIds(sorted(ids)), rid))
            elif isinstance(msg, m.ListEntries):
                ranges = self.journal.entry_ranges(msg.ledger_id)
                self.send(peer, codec.encode_reply(m.EntryRanges(ranges), rid))
            elif isinstance(msg, m.GetStatus):
                info = self.status() if self.status is not None else self.process_info("")
                self.send(peer, codec.encode_reply(m.Status([info]), rid))
            else:
                raise InvalidMessage(f"bookie: unexpected {type(msg).__name__}")
        except UnsupportedVersion as exc:
            self.send(peer, codec.encode_exception(rid, exc))
        except InvalidMessage as exc:
            self._invalid(peer, rid, exc)
        except (Fenced, InvalidArgument, DataCorruption, NoSuchLedger) as exc:
            self.send(peer, codec.encode_exception(rid, exc))
        except StorageError:
            raise
        except Exception as exc:  # a bug: answer, keep serving
            log.exception("bookie: request failed")
            self.send(peer, codec.encode_exception(rid, InternalError(f"{exc!r}")))

    def _invalid(self, peer: bytes, rid: int, exc: InvalidMessage) -> None:
        if len(self.invalid_counts) >= PEERS_TRACKED_MAX:
            self.invalid_counts.clear()
        count = self.invalid_counts.get(peer, 0) + 1
        self.invalid_counts[peer] = count
        if count <= INVALID_MESSAGES_BEFORE_DISCONNECT:
            self.send(peer, codec.encode_exception(rid, exc))

    # --- operations --------------------------------------------------------------------
    def fence_epoch(self, ledger_id: int) -> int | None:
        """The epoch below which adds to the ledger are refused: its own fence (durable or
        pending) or its container's (container_fences.py), whichever is higher."""
        own = self._own_fence(ledger_id)
        container = self.container_fences.epoch(ledger_id >> LEDGER_ID_SHIFT)
        if container and (own is None or container > own):
            return container
        return own

    def _own_fence(self, ledger_id: int) -> int | None:
        durable = self.journal.fenced_epoch(ledger_id)
        pending = self.pending_fences.get(ledger_id)
        return max((e for e in (durable, pending) if e is not None), default=None)

    def _deleted(self, ledger_id: int, what: str) -> None:
        if self.journal.deleted(ledger_id):
            raise NoSuchLedger(f"bookie {what}: ledger {ledger_id} is deleted", ledger=ledger_id)

    def _add(self, peer: bytes, rid: int, msg: m.AddEntry) -> None:
        self._deleted(msg.ledger_id, "add")
        fenced = self.fence_epoch(msg.ledger_id)
        if fenced is not None and msg.epoch < fenced:
            self.counters["fenced_rejects"] += 1
            raise Fenced(
                f"bookie add: ledger {msg.ledger_id} is fenced at epoch {fenced} > {msg.epoch}",
                ledger=msg.ledger_id,
                epoch=msg.epoch,
                fenced_epoch=fenced,
            )
        payload = codec._view(msg.payload)
        if crc32c.crc32c(payload) != msg.crc:
            self.counters["crc_rejects"] += 1
            raise DataCorruption(
                f"bookie add: ledger {msg.ledger_id} entry {msg.entry_id} payload CRC mismatch",
                ledger=msg.ledger_id,
                entry=msg.entry_id,
            )
        try:
            self.journal.add_entry(
                msg.ledger_id,
                msg.entry_id,
                epoch=msg.epoch,
                lac=msg.lac,
                payload=payload,
                token=(peer, codec.encode(m.EntryAdded(msg.ledger_id, msg.entry_id), rid)),
            )
        except ValueError as exc:
            raise InvalidArgument(f"bookie add: {exc}", ledger=msg.ledger_id) from None
        self.counters["adds"] += 1

    def _fence(self, ledger_id: int, epoch: int) -> None:
        self._deleted(ledger_id, "fence")
        container = self.container_fences.epoch(ledger_id >> LEDGER_ID_SHIFT)
        if epoch < container:  # a recoverer older than the container's latest: it lost
            self.counters["fenced_rejects"] += 1
            raise Fenced(
                f"bookie fence: ledger {ledger_id}'s container is fenced at epoch {container} "
                f"> {epoch}",
                ledger=ledger_id,
                epoch=epoch,
                fenced_epoch=container,
            )
        self.container_fences.raise_to(ledger_id >> LEDGER_ID_SHIFT, epoch)
        current = self._own_fence(ledger_id)
        if current is not None and current >= epoch:
            return  # never lower a fence; an equal one is already (being) made durable
        try:
            self.journal.fence(ledger_id, epoch=epoch, token=None)
        except ValueError as exc:
            raise InvalidArgument(f"bookie fence: {exc}", ledger=ledger_id) from None
        self.pending_fences[ledger_id] = epoch

    def _delete(self, peer: bytes, rid: int, msg: m.DeleteLedger) -> None:
        try:
            self.journal.delete_ledger(
                msg.ledger_id, token=(peer, codec.encode_reply(m.Done(), rid))
            )
        except ValueError as exc:
            raise InvalidArgument(f"bookie delete: {exc}", ledger=msg.ledger_id) from None

    def _read(self, rid: int, msg: m.ReadEntry) -> list[Any]:
        self.counters["reads"] += 1
        payload: bytes | None = None
        if msg.entry_id != m.NO_ENTRY:
            try:
                payload = self.journal.read_entry(msg.ledger_id, msg.entry_id)
            except DataCorruption as exc:  # a bad copy here: the reader asks another replica
                return codec.encode_exception(rid, exc)
        reply = m.EntryRead(
            msg.ledger_id,
            msg.entry_id,
            self.journal.last_entry_id(msg.ledger_id),
            self.journal.lac(msg.ledger_id),
            self.journal.fenced_epoch(msg.ledger_id) is not None,
            payload is not None,
            payload if payload is not None else b"",
        )
        return codec.encode(reply, rid)

    def _hello(self, rid: int, msg: m.Hello) -> list[Any]:
        reply = codec.hello_reply(
            msg,
            role="bookie",
            server_id=self.bookie_id,
            incarnation=self.incarnation,
            instance=self.instance,
        )
        return codec.encode(reply, rid)

    def info(self) -> dict[str, Any]:
        return {
            "durability_mode": self.journal.durability_mode,
            "ledgers": len(self.journal.ledgers()),
            "files": len(self.journal.files()),
            **self.journal.counters,
            **self.counters,
            "latency_ms": summaries({**self.latency, **self.journal.latency}),
        }

    def process_info(self, endpoint: str) -> m.ProcessInfo:
        return m.ProcessInfo(
            "bookie", self.bookie_id, os.getpid(), endpoint, "up", info=self.info()
        )


class Bookie:
    """The bookie process: a ROUTER socket and a heartbeat around a `BookieCore`."""

    def __init__(self, config: BookieConfig) -> None:
        self.config = config
        os.makedirs(config.data_dir, exist_ok=True)
        instance = bookie_instance.load_or_create(config.data_dir)  # before serving anything
        journal = Journal(os.path.join(config.data_dir, "journal"), config.journal)
        self.ctx = zmq.Context()
        self.router = transport.server_socket(self.ctx)
        self.router.bind(config.bind)
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.core = BookieCore(
            journal,
            self._send,
            bookie_id=config.bookie_id,
            instance=instance,
            status=lambda: self.core.process_info(self.endpoint),
        )
        self.journal = journal
        self.heartbeat = (
            transport.HeartbeatSender(self.ctx, config.controller) if config.controller else None
        )
        self.stopping = False
        self.dropped_sends = 0

    # --- loop ------------------------------------------------------------------------
    def serve_forever(self) -> int:
        log.info(
            "bookie up endpoint=%s journal=%s durability_mode=%s",
            self.endpoint,
            self.journal.directory,
            self.journal.durability_mode,
        )
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        next_beat = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= next_beat:
                    self._beat()
                    next_beat = now + self.config.heartbeat_s
                if poller.poll(200):
                    self._turn()
        except StorageError as exc:
            log.critical("bookie: journal I/O failure, stopping without another ack: %s", exc)
            return EXIT_IO_ERROR
        finally:
            self._close()
        return 0

    def _turn(self) -> None:
        """One group-commit cycle: drain up to drain_max requests, commit once, answer."""
        started = time.monotonic()
        for _ in range(self.config.drain_max):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) >= 2:
                self.core.receive(frames[0].bytes, frames[1:])
        self.core.end_turn()
        self.core.latency["turn"].record(time.monotonic() - started)

    # --- plumbing ----------------------------------------------------------------------
    def _send(self, peer: bytes, frames: list[Any]) -> None:
        try:
            self.router.send_multipart([peer, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # the peer is gone: it asks again (adds are idempotent)
            self.dropped_sends += 1

    def _beat(self) -> None:
        if self.heartbeat is None:
            return
        self.heartbeat.beat(
            m.Heartbeat(
                role="bookie",
                id=self.config.bookie_id,
                pid=os.getpid(),
                endpoint=self.endpoint,
                state="up",
                info=self.core.info(),
            )
        )
        self.heartbeat.drain()

    def request_stop(self) -> None:
        self.stopping = True

    def _close(self) -> None:
        self.router.close(0)
        if self.heartbeat is not None:
            self.heartbeat.close()
        self.journal.close()
        self.ctx.term()


def run(config: BookieConfig) -> int:
    try:
        bookie = Bookie(config)
    except (OSError, StorageError) as exc:  # e.g. no room for the first journal file
        log.critical("bookie: journal I/O failure at start, not serving: %s", exc)
        return EXIT_IO_ERROR
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: bookie.request_stop())
    return bookie.serve_forever()
