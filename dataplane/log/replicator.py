"""The replicator: one per worker, it writes its containers' replicated logs.

Each submitted record becomes the next entry of its log's open ledger (ReplicatedLog.seal)
and is sent to every bookie of the ledger's ensemble (write quorum = ensemble). The entry is
copied once into a ZeroMQ frame that every replica's message shares (ZeroMQ counts its
references): a zero-copy send of the record buffer itself would pin it until ZeroMQ lets go,
and a message queued to a bookie that died is not let go of, so the buffer, and every later
completion of the log, would wait for that bookie. (A copy per replica, as before, cost two
more memcpys of each entry.)
Completions go back to the worker in submission order per log, each once `ack_quorum`
bookies answered `EntryAdded`. An entry short of its quorum after `add_timeout_s` is
sent again to the bookies that have not answered (adds are idempotent); a bookie that is not
connected is skipped (IMMEDIATE), never queued for without bound. With fewer than
`ack_quorum` bookies up, nothing is acknowledged until they return.

Rollover: a record that does not fit the open ledger waits (with everything after it) until
every entry of that ledger is acknowledged; then the ledger is closed at its last entry and
the next opened in one compare-and-set, and the waiting records go on.

Ensemble change: an entry complete at the quorum but not acknowledged by some bookie within
`bookie_failed_s` marks that bookie failed; where enough other bookies exist it is left out
of new ensembles for `exclusion_s`, and the log rolls over (as above) onto a ledger whose
ensemble does not include it. Entries of the old ledger keep their `ack_quorum` copies.

Catch-up (catchup.py): entries a bookie missed are copied to it from another replica once it
answers again, so a restarted bookie holds the write quorum's copies again (an entry only
once it has been missed for `add_timeout_s`: a slow bookie's late ack usually comes first);
`catch_up` adds the entries a recovery found bookies lack (ReplicatedLog._find_lacking).

`ReplicatorCore` is all of this without sockets, threads or a clock of its own (the
protocol simulation drives it); `Replicator` adds one DEALER per bookie, polled by the
worker's loop (inline) or by a thread of its own.

Fail-stop: a `Fenced` reply (another owner recovered the log) or any other refusal of an
add raises out of `pump` (inline: the worker exits without another ack) or stops the
thread and reports through `fatal` (threaded).
It must never: acknowledge an entry with fewer than `ack_quorum` durable copies, or before
an earlier entry of its log.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import crc32c
import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.crashpoints import crash_point
from streamvault.client.protocol.errors import Fenced, NoSuchLedger, error_from_code
from streamvault.client.protocol.latency import LatencyWindow
from streamvault.dataplane.log.catchup import CatchUp
from streamvault.dataplane.log.local_log import WriteBuffer
from streamvault.dataplane.log.replicated_log import ReplicatedLog, ReplicationConfig

log = logging.getLogger(__name__)

SEND_HWM = 256
"""Messages ZeroMQ queues for one bookie. A bookie that is connected but does not read (a
stalled process) holds at most this many entries queued (plus the kernel's socket
buffers), not the whole write stream; past it a send is refused like one to a bookie that
is not connected (counted in `sends_refused`), the entry completes at the quorum without
it, and catch-up copies it later. Far above what a healthy bookie has queued: each log
has at most `buffers` entries in flight, catch-up at most 16 copies per bookie."""
SHARED_FRAME_BYTES_MIN = 4096
"""An entry's frames larger than this are copied once and shared by the bookies' messages;
smaller ones are copied into each message (cheaper than a shared frame's bookkeeping)."""


class _Pending:
    __slots__ = (
        *("log", "buffer", "token", "location", "frames", "acked", "sent_at", "endpoints"),
        "first_sent_at",
    )

    def __init__(self, log_: ReplicatedLog, buffer: Any, token: Any, location: Any) -> None:
        self.endpoints: list[str] = []
        self.log = log_
        self.buffer = buffer
        self.token = token
        self.location = location
        self.frames: list[Any] = []
        self.acked: set[str] = set()
        self.sent_at = 0.0
        self.first_sent_at = 0.0


Completion = tuple[ReplicatedLog, Any, Any, Any]


class ReplicatorCore:
    """The replicator's protocol logic, without sockets, threads or clocks (sans-I/O): the
    thread (`Replicator`) feeds `turn` the replies its sockets received; the protocol
    simulation (tests/dataplane/log/test_quorum_sim.py) does the same over a simulated
    network and clock. `send(endpoint, frames) -> bool` must not block (False: not sent,
    the bookie is not connected)."""

    def __init__(
        self,
        replication: ReplicationConfig,
        deliver: Callable[[list[Completion]], None],
        send: Callable[[str, list[Any]], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replication = replication
        self._deliver = deliver
        self._send_frames = send
        self.clock = clock
        self._queue: list[tuple[ReplicatedLog, Any, int, Any]] = []
        self._lock = threading.Lock()
        self._pending: dict[int, collections.deque[_Pending]] = {}
        self._by_entry: dict[tuple[int, int], _Pending] = {}
        self._held: dict[int, collections.deque[tuple[ReplicatedLog, Any, int, Any]]] = {}
        self._deletes: collections.deque[tuple[int, list[str]]] = collections.deque()
        self._lacking: list[tuple[str, ReplicatedLog, tuple[int, int], list[str]]] = []
        """Entries recovery found a bookie lacks, for catch-up (taken at the next turn)."""
        self.counters = dict.fromkeys(
            ("entries", "resends", "rollovers", "completions", "ensemble_changes", "sends_refused"),
            0,
        )
        self._id_of = {endpoint: bookie for bookie, endpoint in replication.bookies.items()}
        self.latency = {"quorum": LatencyWindow()}
        """Each entry's first send to its `ack_quorum`-th ack (the replicas' round trip)."""
        self._missing: dict[str, float] = {}
        """Endpoint -> when the oldest entry it missed (completed without it) was sent."""
        self._logs: dict[int, ReplicatedLog] = {}
        self.catchup = CatchUp(
            send,
            timeout_s=replication.catchup_timeout_s,
            grace_s=replication.add_timeout_s,  # an add unanswered this long is overdue
            clock=clock,
        )

    def _wake(self) -> None:
        """Called after a submission (the thread wakes its poll)."""

    def submit(self, log_: ReplicatedLog, buffer: WriteBuffer, payload_bytes: int, token: Any):
        with self._lock:
            self._queue.append((log_, buffer, payload_bytes, token))
        self._wake()

    def run_task(self, log_: ReplicatedLog, task: Callable[[], Any]) -> None:
        """Run `task` on this thread once every entry submitted before it is complete; its
        result comes back as a completion with buffer None and token ("task", result)."""
        with self._lock:
            self._queue.append((log_, None, 0, task))
        self._wake()

    def catch_up(
        self, log_: ReplicatedLog, lacking: list[tuple[str, tuple[int, int], list[str]]]
    ) -> None:
        """Have catch-up copy to each bookie the entries recovery found it lacks: (target
        endpoint, (ledger, entry), endpoints that hold the entry). Any thread."""
        with self._lock:
            self._lacking.extend((target, log_, key, sources) for target, key, sources in lacking)
        self._wake()

    def delete_ledger(self, ledger_id: int, endpoints: list[str]) -> None:
        """Ask the bookies to delete a ledger (where the replicator runs; best effort)."""
        self._deletes.append((ledger_id, endpoints))

    def turn(self, replies: Iterable[tuple[str, Any, Any]]) -> None:
        """One turn: take the submissions, then `replies` ((endpoint, header, body) from the
        bookies), resend what is overdue, and deliver what completed. Raises on a refusal
        (Fenced, or any other error reply): the caller stops and acknowledges nothing more."""
        with self._lock:
            batch, self._queue = self._queue, []
            lacking, self._lacking = self._lacking, []
        for target, log_, key, sources in lacking:
            self.catchup.missed(target, log_, key, sources)
        for log_, buffer, payload_bytes, token in batch:
            self._take(log_, buffer, payload_bytes, token)
        for endpoint, header, body in replies:
            self._reply(endpoint, header, body)
        self._resend_overdue()
        if self._missing:
            self._check_failed()
        self.catchup.tick()
        self.counters.update(self.catchup.counters)
        self._send_deletes()
        done: list[Completion] = []
        for key in list(self._pending):
            self._complete(key, done)
        if done:
            self.counters["completions"] += len(done)
            self._deliver(done)

    def _take(self, log_: ReplicatedLog, buffer: Any, payload_bytes: int, token: Any) -> None:
        key = id(log_)
        self._logs[key] = log_
        pending = self._pending.setdefault(key, collections.deque())
        held = self._held.get(key)
        if held or (buffer is not None and pending and log_.needs_rollover(payload_bytes)):
            # a rollover waits until every entry of the old ledger is acknowledged (its
            # metadata closes it at its last entry); what comes meanwhile waits, in order
            entry = (log_, buffer, payload_bytes, token)
            self._held.setdefault(key, collections.deque()).append(entry)
            return
        if buffer is None:
            item = _Pending(log_, None, token, None)
            pending.append(item)
            return
        if log_.needs_rollover(payload_bytes):  # nothing pending: close and open now
            self._rollover(log_)
        location, record = log_.seal(buffer, payload_bytes)
        item = _Pending(log_, buffer, token, location)
        crc = crc32c.crc32c(record)
        assert log_.ledger is not None
        lac = log_.ledger.acked_entry_id
        add = m.AddEntry(location.ledger_id, location.entry_id, log_.epoch, lac, crc, record)
        item.frames = self._shared_frames(codec.encode(add, 0))
        item.endpoints = log_.endpoints(log_.ledger.info)
        pending.append(item)
        self._by_entry[(location.ledger_id, location.entry_id)] = item
        self.counters["entries"] += 1
        crash_point("before_write")
        self._send(item)
        crash_point("after_write_before_sync")

    def _shared_frames(self, frames: list[Any]) -> list[Any]:
        """The frames every bookie of an entry is sent, independent of the record buffer
        (the simulation's network copies what it is sent: as they are)."""
        return frames

    def _rollover(self, log_: ReplicatedLog) -> None:
        self.counters["rollovers"] += 1
        log_._open_next_ledger()
        crash_point("rollover_after_create")

    def _send(self, item: _Pending) -> None:
        item.sent_at = self.clock()
        item.first_sent_at = item.first_sent_at or item.sent_at
        for endpoint in item.endpoints:
            if endpoint not in item.acked and not self._send_frames(endpoint, item.frames):
                # not connected, or its queue is full: the resend after add_timeout_s tries
                # again while the entry lacks its quorum; catch-up copies it after that
                self.counters["sends_refused"] += 1

    def _reply(self, endpoint: str, header: Any, body: Any) -> None:
        if self.catchup.owns(header.request_id):
            if isinstance(body, m.ErrorReply) and body.code == Fenced.code:
                raise error_from_code(body.code, body.message, body.fields)
            self.catchup.on_reply(header.request_id, body)
            return
        if isinstance(body, m.EntryAdded):
            self._missing.pop(endpoint, None)  # alive (a late ack counts too)
            key = (body.ledger_id, body.entry_id)
            item = self._by_entry.get(key)
            if item is not None:
                item.acked.add(endpoint)
            self.catchup.acked(endpoint, key)
        elif isinstance(body, m.ErrorReply):
            exc = error_from_code(body.code, body.message, body.fields)
            if isinstance(exc, NoSuchLedger):  # only a newer owner deletes an open ledger
                raise Fenced(f"replicator: {exc.message}: another owner truncated it", **exc.fields)
            if isinstance(exc, Fenced):
                raise exc  # another owner recovered this log: stop
            log.error("replicator: bookie %s refused an add: %s", endpoint, exc)
            raise exc

    def _resend_overdue(self) -> None:
        now = self.clock()
        timeout = self.replication.add_timeout_s
        for pending in self._pending.values():
            for item in pending:
                if item.buffer is None or len(item.acked) >= self.replication.ack_quorum:
                    continue
                if now - item.sent_at >= timeout:
                    self.counters["resends"] += 1
                    self._send(item)

    def _complete(self, key: int, done: list[Completion]) -> None:
        pending = self._pending[key]
        quorum = self.replication.ack_quorum
        while pending:
            item = pending[0]
            if item.buffer is None:  # a task: everything before it is complete
                pending.popleft()
                done.append((item.log, None, ("task", item.token()), None))
                continue
            if len(item.acked) < quorum:
                break
            key = (item.location.ledger_id, item.location.entry_id)
            for endpoint in item.endpoints:
                if endpoint not in item.acked:  # complete without it: it may have failed
                    self._missing.setdefault(endpoint, item.first_sent_at)
                    self.catchup.missed(endpoint, item.log, key, sorted(item.acked))
            pending.popleft()
            self.latency["quorum"].record(self.clock() - item.first_sent_at)
            del self._by_entry[(item.location.ledger_id, item.location.entry_id)]
            ledger = item.log.ledger
            if ledger is not None and ledger.info.ledger_id == item.location.ledger_id:
                ledger.acked_entry_id = item.location.entry_id
            crash_point("after_sync_before_ack")
            done.append((item.log, item.buffer, item.token, item.location))
        held = self._held.get(key)
        if held and not pending:
            items = list(held)
            held.clear()
            for entry in items:
                self._take(*entry)

    def _check_failed(self) -> None:
        """A bookie that has acknowledged nothing since an entry it missed was sent
        `bookie_failed_s` ago is failed: every log whose open ledger has it, where a spare
        exists, changes its ensemble (rolls over onto a ledger without it once nothing of
        the old one is in flight)."""
        now = self.clock()
        for endpoint, since in list(self._missing.items()):
            if now - since < self.replication.bookie_failed_s:
                continue
            # declared failed once: it stays out of new ensembles for exclusion_s, then may
            # be chosen again (and is declared failed again if it still misses entries)
            del self._missing[endpoint]
            bookie = self._id_of[endpoint]
            for log_ in self._logs.values():
                if log_.change_ensemble or not log_.exclude(bookie):
                    continue
                log_.change_ensemble = True
                self.counters["ensemble_changes"] += 1
                log.warning(
                    "log=%s bookie %s (%s) failed: ensemble change", log_.key, bookie, endpoint
                )

    def _send_deletes(self) -> None:
        while self._deletes:
            ledger_id, endpoints = self._deletes.popleft()
            frames = codec.encode(m.DeleteLedger(ledger_id), 0)
            for endpoint in endpoints:
                if not self._send_frames(endpoint, frames):
                    log.warning(
                        "replicator: delete of ledger %d not sent to %s", ledger_id, endpoint
                    )


class Replicator(ReplicatorCore):
    """The replicator of one worker: a DEALER per bookie around a `ReplicatorCore`.

    Inline (`threaded=False`, the worker's way): the caller's loop polls `sockets` with its
    own and calls `pump` with the ready ones after submitting; nothing crosses threads, so
    an entry goes out in the loop turn that built it and its acks are applied in the turn
    that reads them (a thread of its own cost the worker a GIL hand-off and an eventfd wake
    each way per entry). Threaded (`threaded=True`): a thread of its own polls the sockets
    and a wake eventfd, for callers without a loop (test harnesses)."""

    def __init__(
        self,
        ctx: zmq.Context,
        replication: ReplicationConfig,
        deliver: Callable[[list[Completion]], None],
        fatal: Callable[[BaseException], None],
        *,
        threaded: bool = True,
    ) -> None:
        super().__init__(replication, deliver, self._send_socket)
        self.ctx = ctx
        self._fatal = fatal
        self._threaded = threaded
        self._waker = transport.Waker()
        self._stopping = False
        self._socks: dict[str, zmq.Socket] = {}
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)

    def _wake(self) -> None:
        if self._threaded:
            self._waker.wake()

    @property
    def sockets(self) -> list[zmq.Socket]:
        """The bookie sockets (inline: the caller polls them for POLLIN)."""
        return list(self._socks.values())

    def start(self) -> None:
        if self._threaded:
            self._thread.start()
        else:
            self._open_sockets()

    def stop(self) -> None:
        self._stopping = True
        if self._thread.ident is not None:
            self._waker.wake()
            self._thread.join(timeout=10)
        elif not self._threaded:
            self._close_sockets()
        self._waker.close()

    def pump(self, ready: Iterable[Any] = ()) -> None:
        """One turn with the replies waiting on the sockets in `ready` (inline: the caller's
        loop thread). Raises like `turn`: the caller stops and acknowledges nothing more."""
        replies = [
            (endpoint, header, body)
            for endpoint, sock in self._socks.items()
            if sock in ready
            for header, body in transport.replies(sock)
        ]
        self.turn(replies)

    def _open_sockets(self) -> None:
        for endpoint in self.replication.bookies.values():
            sock = transport.client_socket(self.ctx, endpoint)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a bookie that is not there
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            self._socks[endpoint] = sock

    def _close_sockets(self) -> None:
        for sock in self._socks.values():
            sock.close(0)
        self._socks.clear()

    def _shared_frames(self, frames: list[Any]) -> list[Any]:
        return [
            zmq.Frame(f, copy=True) if memoryview(f).nbytes > SHARED_FRAME_BYTES_MIN else f
            for f in frames
        ]

    def _send_socket(self, endpoint: str, frames: list[Any]) -> bool:
        sock = self._socks.get(endpoint)
        if sock is None:
            return False
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=True)
            return True
        except zmq.Again:
            return False

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._waker.fd, zmq.POLLIN)
        self._open_sockets()
        for sock in self._socks.values():
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stopping:
                events = dict(poller.poll(50))
                if self._waker.fd in events:
                    self._waker.drain()
                self.pump(events)
        except BaseException as exc:  # fail-stop: report, acknowledge nothing more
            log.critical("replicator: failure, nothing more is acknowledged: %r", exc)
            self._fatal(exc)
        finally:
            self._close_sockets()
