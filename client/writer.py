"""The event writer: asynchronous inside, one background I/O thread per writer.

User threads frame events into per-segment batches (`write_event`, `write_events`) and get
futures; the I/O thread cuts batches into blocks, sends them over one DEALER per worker,
and completes futures on cumulative acks. Batching adapts: a segment with nothing in flight
sends at once; otherwise its batch grows until `batch_bytes_max` or `batch_wait_s`. Memory
is bounded: a writer holds at most `buffer_bytes_max` unacknowledged bytes, and callers
block (backpressure) beyond it; at most `in_flight_bytes_max` per segment are in flight.

Reconnects: a connection that drops is replaced by a new socket (nothing stale is ever
delivered), `Hello` and `SetupAppend` are repeated, the segment's stored last event number
completes what is already durable, and the rest is resent as the same blocks, so the
server's per-writer event numbers deduplicate them. When a worker does not come back at its
old endpoint, the controller is asked where the segment lives now.

Event numbers: a writer without a `writer_id` gets a random id and numbers its events
itself. With a stable `writer_id`, either numbering continues from the highest number the
stream's segments hold for it (learned at creation), or the caller passes `sequence=` on
every event (strictly increasing per segment), which makes retries after a client restart
exactly-once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamvault.client.connection import next_request_id
from streamvault.client.controller_client import ControllerClient
from streamvault.client.protocol import codec, events, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    EventTooLarge,
    InvalidArgument,
    InvalidEventNumber,
    InvalidMessage,
    RequestTimeout,
    RetryableError,
    StreamSealed,
    StreamVaultError,
    error_from_code,
)
from streamvault.client.protocol.limits import (
    EVENT_BYTES_MAX,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN,
)
from streamvault.client.routing import Router
from streamvault.client.segment_writer import Block, SegmentWriter

log = logging.getLogger(__name__)


REROUTE_RECHECK_S = 0.2
"""How often a connection still not back asks the controller again: a worker restarted on
another port (or a standby that took its containers over) is found this soon after it
registered, not up to `reroute_after_s` later."""


@dataclass(frozen=True)
class WriterConfig:
    batch_bytes_max: int = 512 * 1024
    """A batch is cut into a block at this size even while earlier blocks are in flight.
    Larger blocks mean fewer messages, records and bookie entries per byte: with 512 KiB
    (and a 2 MiB window and buffer, below) against 256 KiB (1 MiB), interleaved on two
    cores with 100-byte events, one writer reached 2.57-3.23 M events/s at RF=1 (2.02-2.66)
    and 1.39-1.67 M at RF=3 (1.10-1.21), paced writers at 0.3 and 1 M/s at RF=1 kept their
    p95 (2.4-3.5 and 4.7-6.3 ms, against 2.7-3.1 and 5.4-5.8), and at RF=3 at 1.2 M/s
    14.9-16.7 ms (24.5-81.7) (perf/bench_replication.py --batch-kib 512 --in-flight-mib 2;
    docs/ARCHITECTURE.md, issue 4)."""
    batch_wait_s: float = 0.02
    """...or when its first event has waited this long."""
    in_flight_bytes_max: int = 2 * 1024 * 1024
    """Bytes sent but not acknowledged, per segment. Throughput is at most this over the
    servers' round trip: at RF=3 (a ~7 ms round trip) 512 KiB held one writer to
    0.73-0.84 M 100-byte events/s, 1 MiB to 0.87-0.98 M (interleaved A/B, medians 0.83 vs
    0.93 M); RF=1 did not change (perf/bench_append.py). 2 MiB with 512 KiB blocks: see
    `batch_bytes_max`."""
    buffer_bytes_max: int = 2 * 1024 * 1024
    """Unacknowledged bytes per writer; `write_*` blocks beyond this. A writer producing as
    fast as it can waits about buffer / throughput for its acks, so this bounds latency:
    2 MiB at ~300 MB/s is ~7 ms; saturated p95 11-13 ms at RF=1 and 20-25 ms at RF=3 (with
    1 MiB and 256 KiB blocks 7-9 and 14-16 ms, for 20-30 % less throughput; a writer that
    must hold latency while saturating can set a smaller buffer). An event larger than this
    is admitted alone."""
    ack_timeout_s: float = 30.0
    """A block unacknowledged this long resets its connection (and is resent)."""
    reroute_after_s: float = 1.0
    """A connection that does not come back in this time asks the controller for a route
    (then again every `REROUTE_RECHECK_S` until it is back or the route changed)."""
    setup_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.batch_bytes_max <= self.in_flight_bytes_max <= self.buffer_bytes_max:
            raise ValueError(
                "WriterConfig: need 0 < batch_bytes_max <= in_flight_bytes_max <= buffer_bytes_max"
            )


def writer_id_bytes(writer_id: str | None) -> bytes:
    if writer_id is None:
        return os.urandom(16)
    if not isinstance(writer_id, str) or not writer_id:
        raise InvalidArgument("writer_id must be a non-empty string", field="writer_id")
    return hashlib.blake2b(writer_id.encode(), digest_size=16).digest()


class _Conn:
    __slots__ = (
        "endpoint",
        "sock",
        "monitor",
        "state",
        "hello_rid",
        "since",
        "segments",
        "next_route_check",
    )

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sock = transport.client_socket(ctx, endpoint)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.state = "hello"
        self.hello_rid = 0
        self.since = time.monotonic()
        self.next_route_check = self.since
        self.segments: set[SegmentWriter] = set()

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.sock.close(0)


class EventStreamWriter:
    """Writes events to one stream. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        controller_endpoint: str,
        scope: str,
        stream: str,
        *,
        writer_id: str | None = None,
        config: WriterConfig | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.scope, self.stream = scope, stream
        self.config = config or WriterConfig()
        self.ctx = ctx or zmq.Context.instance()
        self.writer_id = writer_id_bytes(writer_id)
        self._stable_id = writer_id is not None
        self._controller = ControllerClient(controller_endpoint, ctx=self.ctx)
        info = self._controller.call(m.GetStream(scope=scope, stream=stream))
        if info.state != "ACTIVE":
            self._controller.close()
            raise StreamSealed(f"writer: stream {scope}/{stream} is {info.state}", stream=stream)
        self._segments = [SegmentWriter(s.segment) for s in info.segments]
        self._by_name = {sw.name: sw for sw in self._segments}
        self._router: Router[SegmentWriter] = Router(
            [s.key_low for s in info.segments], self._segments
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buffered = 0
        self._next_number = 0
        self._sequence_mode: bool | None = None
        self._closed = False
        self._stopping = False
        self._io_idle = True
        self._waker = transport.Waker()
        self._conns: dict[str, _Conn] = {}
        self._requests: dict[int, SegmentWriter] = {}
        self._setup_done: set[SegmentWriter] = set()
        self._all_setup = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{stream}", daemon=True)
        self._thread.start()
        if self._stable_id and not self._all_setup.wait(self.config.setup_timeout_s):
            self.close(timeout=0)
            raise RequestTimeout(
                f"writer {scope}/{stream}: segments not reachable in {self.config.setup_timeout_s}s"
            )
        with self._lock:
            self._next_number = max([sw.last_stored for sw in self._segments] + [-1]) + 1

    # --- public API (any thread) ---------------------------------------------------------
    def write_event(
        self, data: bytes, routing_key: str | None = None, *, sequence: int | None = None
    ) -> Future:
        """Append one event; the future completes when it is durable."""
        size = len(data)
        if size > EVENT_BYTES_MAX:
            raise EventTooLarge(
                f"write_event: event_bytes={size} > event_bytes_max={EVENT_BYTES_MAX}",
                event_bytes=size,
            )
        with self._lock:
            sw = self._admit(routing_key, size + 4, sequence)
            if sequence is not None:
                if sequence <= sw.last_stored:
                    return _done_future()  # durable already (a retry after a restart)
                if sequence <= sw.max_sequence:
                    raise InvalidEventNumber(
                        f"write_event: sequence={sequence} <= previous {sw.max_sequence} for "
                        f"segment {sw.segment}",
                        sequence=sequence,
                        previous=sw.max_sequence,
                    )
                sw.max_sequence = sequence
                future = sw.add(events.pack_event_header(size) + data, size + 4, 1, sequence)
            else:
                future = sw.add_event(data)
            self._buffered += size + 4
            wake = self._after_add(sw)
        if wake:
            self._waker.wake()
        return future

    def write_events(
        self, items: Sequence[bytes] | np.ndarray, routing_key: str | None = None
    ) -> Future:
        """Append many events (a list of bytes, or a 2-D uint8 array of fixed-size events) to
        the segment of `routing_key`, in order; one future for all of them."""
        if isinstance(items, np.ndarray):
            count = items.shape[0] if items.ndim == 2 else 0
            block: Any = events.frame_array(items)
        else:
            count = len(items)
            block = events.frame_events(items)
        if count == 0:
            return _done_future()
        size = len(block) if not isinstance(block, np.ndarray) else block.nbytes
        if size > self.config.batch_bytes_max and count > 1:
            return self._write_chunks(items, routing_key)
        with self._lock:
            sw = self._admit(routing_key, size, None)
            future = sw.add(block, size, count, None)
            self._buffered += size
            wake = self._after_add(sw)
        if wake:
            self._waker.wake()
        return future

    def _write_chunks(self, items: Sequence[bytes] | np.ndarray, routing_key: str | None) -> Future:
        sizes = (
            np.fromiter((len(e) + 4 for e in items), dtype=np.int64, count=len(items))
            if not isinstance(items, np.ndarray)
            else np.full(items.shape[0], items.shape[1] + 4)
        )
        ends = np.cumsum(sizes)
        future: Future | None = None
        start = 0
        while start < len(items):
            limit = (ends[start - 1] if start else 0) + self.config.batch_bytes_max
            stop = max(start + 1, int(np.searchsorted(ends, limit, side="right")))
            future = self.write_events(items[start:stop], routing_key)
            with self._lock:  # keep each chunk its own block
                sw = self._router.route(routing_key)
                if sw.count:
                    self._next_number = sw.cut(self._next_number)[1]
            start = stop
        self._waker.wake()
        assert future is not None
        return future

    def _admit(self, routing_key: str | None, size: int, sequence: int | None) -> SegmentWriter:
        """Route, check and wait for buffer space (called with the lock held)."""
        if self._closed:
            raise InvalidArgument("writer is closed", field="writer")
        mode = sequence is not None
        if self._sequence_mode is None:
            self._sequence_mode = mode
        elif self._sequence_mode != mode:
            raise InvalidArgument(
                "write: pass sequence= on every event of a writer or on none", field="sequence"
            )
        sw = self._router.route(routing_key)
        if sw.error is not None:
            raise sw.error
        if mode and sequence < 0:  # type: ignore[operator]
            raise InvalidEventNumber(f"write: sequence={sequence} < 0", sequence=sequence)
        while self._buffered + size > self.config.buffer_bytes_max and self._buffered:
            self._changed.wait(1.0)
            if sw.error is not None:
                raise sw.error
        if sw.count and sw.bytes + size > self.config.batch_bytes_max:
            self._next_number = sw.cut(self._next_number)[1]
        return sw

    def _after_add(self, sw: SegmentWriter) -> bool:
        """Whether the I/O thread should be woken for this segment now."""
        if self._io_idle and (sw.ready or not sw.in_flight):
            self._io_idle = False
            return True
        return False

    def flush(self, timeout: float | None = None) -> None:
        """Send everything written so far and wait until it is durable."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            for sw in self._segments:
                if sw.count and sw.error is None:
                    self._next_number = sw.cut(self._next_number)[1]
            self._io_idle = False
        self._waker.wake()
        with self._lock:
            while True:
                errors = [sw.error for sw in self._segments if sw.error is not None]
                if errors:
                    raise errors[0]
                if not self._buffered:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RequestTimeout(
                        f"flush: {self._buffered} bytes still unacknowledged",
                        unacknowledged_bytes=self._buffered,
                    )
                self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        try:
            if timeout != 0:
                self.flush(timeout)
        finally:
            self._closed = True
            self._stopping = True
            self._waker.wake()
            self._thread.join(timeout=10)
            self._waker.close()
            self._controller.close()

    def __enter__(self) -> EventStreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- I/O thread ----------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._waker.fd, zmq.POLLIN)
        self._poller = poller
        try:
            while not self._stopping:
                events_ = dict(poller.poll(self._poll_timeout_ms()))
                if self._waker.fd in events_:
                    self._waker.drain()
                with self._lock:
                    self._io_idle = True
                for conn in list(self._conns.values()):
                    if conn.monitor in events_:
                        self._on_monitor(conn)
                    if conn.sock in events_ and self._conns.get(conn.endpoint) is conn:
                        self._receive(conn)
                self._maintain()
                self._pump()
        except BaseException as exc:  # the writer cannot continue: fail everything pending
            log.exception("writer %s/%s I/O thread failed", self.scope, self.stream)
            self._fail_all(
                exc
                if isinstance(exc, StreamVaultError)
                else StreamVaultError(f"writer I/O thread failed: {exc!r}")
            )
        finally:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    def _poll_timeout_ms(self) -> int:
        timeout = 0.1
        now = time.monotonic()
        with self._lock:
            for sw in self._segments:
                if sw.count and sw.in_flight:
                    timeout = min(timeout, max(0.0, sw.since + self.config.batch_wait_s - now))
        return int(timeout * 1000) + (0 if timeout == 0 else 1)

    def _conn(self, endpoint: str) -> _Conn:
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = self._conns[endpoint] = _Conn(self.ctx, endpoint)
            self._poller.register(conn.sock, zmq.POLLIN)
            self._poller.register(conn.monitor, zmq.POLLIN)
            conn.hello_rid = self._send(
                conn, m.Hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION, "streamvault-writer")
            )
        return conn

    def _drop_conn(self, conn: _Conn) -> set[SegmentWriter]:
        self._poller.unregister(conn.sock)
        self._poller.unregister(conn.monitor)
        conn.close()
        del self._conns[conn.endpoint]
        return conn.segments

    def _reset_conn(self, conn: _Conn, why: str) -> None:
        """Replace a connection's socket: nothing queued on the old one is delivered later."""
        log.info(
            "writer %s/%s: connection to %s reset (%s)", self.scope, self.stream, conn.endpoint, why
        )
        segments = self._drop_conn(conn)
        fresh = self._conn(conn.endpoint)
        fresh.segments = segments
        for sw in segments:
            sw.state = "setup"

    def _send(self, conn: _Conn, body: Any) -> int:
        rid = next_request_id()
        conn.sock.send_multipart(codec.encode(body, rid), copy=False)
        return rid

    def _on_monitor(self, conn: _Conn) -> None:
        disconnected = False
        while True:
            try:
                event = recv_monitor_message(conn.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_DISCONNECTED:
                disconnected = True
        if disconnected:
            self._reset_conn(conn, "disconnected")

    def _receive(self, conn: _Conn) -> None:
        for header, body in transport.replies(conn.sock):
            if isinstance(body, m.DataAppended):
                self._on_ack(body)
            elif isinstance(body, m.AppendSetup):
                self._on_setup(conn, header.request_id, body)
            elif isinstance(body, m.HelloReply):
                if header.request_id == conn.hello_rid and conn.state == "hello":
                    conn.state = "ready"
                    for sw in conn.segments:
                        self._setup(conn, sw)
            elif isinstance(body, m.ErrorReply):
                self._on_error(conn, header.request_id, body)
            if conn.endpoint not in self._conns or self._conns[conn.endpoint] is not conn:
                return

    def _setup(self, conn: _Conn, sw: SegmentWriter) -> None:
        sw.state = "setup"
        sw.setup_request_id = self._send(conn, m.SetupAppend(self.writer_id, sw.name))
        self._requests[sw.setup_request_id] = sw

    def _on_setup(self, conn: _Conn, rid: int, body: m.AppendSetup) -> None:
        sw = self._requests.pop(rid, None)
        if sw is None or rid != sw.setup_request_id or sw not in conn.segments:
            return
        with self._lock:
            done = sw.resume(body.last_event_number)
            self._settle(done)
        self._setup_done.add(sw)
        if len(self._setup_done) == len(self._segments):
            self._all_setup.set()
        self._complete(done)

    def _on_ack(self, body: m.DataAppended) -> None:
        if body.writer_id != self.writer_id:
            return
        sw = self._by_name.get(body.segment)
        if sw is None:
            return
        with self._lock:
            done = sw.acknowledge(body.last_event_number)
            self._settle(done)
        self._complete(done)

    def _settle(self, done: list[Block]) -> None:
        """Account for completed blocks (lock held)."""
        if done:
            for block in done:
                self._requests.pop(block.request_id, None)
                self._buffered -= block.size
            self._changed.notify_all()

    def _complete(self, done: list[Block]) -> None:
        for block in done:
            for future in block.futures:
                if not future.done():
                    future.set_result(None)

    def _on_error(self, conn: _Conn, rid: int, body: m.ErrorReply) -> None:
        sw = self._requests.get(rid)
        if sw is None:
            return
        exc = error_from_code(body.code, body.message, body.fields)
        if sw.state != "ready" and rid != sw.setup_request_id:
            return  # a late answer to a block sent before the segment was reset
        if isinstance(exc, RetryableError):
            log.info("writer %s: %s: %s; re-routing", sw.segment, type(exc).__name__, exc)
            conn.segments.discard(sw)
            sw.state = "unrouted"
            sw.endpoint = ""
        elif isinstance(exc, InvalidMessage) and rid != sw.setup_request_id:
            self._setup(conn, sw)  # the worker lost our session (e.g. it restarted)
        else:
            self._fail_segment(sw, exc)

    def _fail_segment(self, sw: SegmentWriter, exc: BaseException) -> None:
        with self._lock:
            sw.error = exc
            blocks = list(sw.in_flight) + list(sw.ready)
            futures = [f for b in blocks for f in b.futures]
            if sw.future is not None:
                futures.append(sw.future)
            self._buffered -= sw.unacknowledged_bytes()
            sw.in_flight.clear()
            sw.ready.clear()
            sw.in_flight_bytes = 0
            sw.parts, sw.count, sw.bytes, sw.future, sw.numbers = [], 0, 0, None, None
            self._changed.notify_all()
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for sw in self._segments:
            if sw.error is None:
                self._fail_segment(sw, exc)

    def _maintain(self) -> None:
        now = time.monotonic()
        for sw in self._segments:
            if sw.state == "unrouted" and sw.error is None and now >= sw.next_route_at:
                refresh = sw.next_route_at > 0  # a re-route: the cached map was wrong
                sw.next_route_at = now + 0.1
                self._route(sw, refresh=refresh)
        for conn in list(self._conns.values()):
            if (
                conn.state == "hello"
                and now >= conn.next_route_check
                and now - conn.since >= self.config.reroute_after_s
            ):
                conn.next_route_check = now + min(self.config.reroute_after_s, REROUTE_RECHECK_S)
                for sw in list(conn.segments):
                    self._route(sw, refresh=True)
            elif conn.state == "ready":
                for sw in conn.segments:
                    if sw.in_flight and now - sw.in_flight[0].sent_at > self.config.ack_timeout_s:
                        self._reset_conn(conn, "ack timeout")
                        break
            if (
                conn.endpoint in self._conns
                and not conn.segments
                and now - conn.since > self.config.reroute_after_s
            ):
                self._drop_conn(conn)

    def _route(self, sw: SegmentWriter, *, refresh: bool = False) -> None:
        try:
            endpoint = self._controller_endpoint(sw.segment, refresh)
        except StreamVaultError as exc:
            if not isinstance(exc, RetryableError):
                self._fail_segment(sw, exc)
            return
        if endpoint == sw.endpoint and sw.state != "unrouted":
            return
        old = self._conns.get(sw.endpoint)
        if old is not None:
            old.segments.discard(sw)
        sw.endpoint = endpoint
        conn = self._conn(endpoint)
        conn.segments.add(sw)
        if conn.state == "ready":
            self._setup(conn, sw)
        else:
            sw.state = "setup"

    def _controller_endpoint(self, segment: str, refresh: bool) -> str:
        self._controller.timeout_s = 1.0
        return self._controller.endpoint_for(segment, refresh=refresh)

    def _pump(self) -> None:
        """Cut due batches and send what the in-flight windows allow (I/O thread)."""
        now = time.monotonic()
        cfg = self.config
        sends: list[tuple[_Conn, SegmentWriter, Block]] = []
        with self._lock:
            for sw in self._segments:
                if sw.state != "ready":
                    continue
                if sw.count and (
                    not sw.in_flight
                    or sw.bytes >= cfg.batch_bytes_max
                    or now - sw.since >= cfg.batch_wait_s
                ):
                    self._next_number = sw.cut(self._next_number)[1]
                conn = self._conns.get(sw.endpoint)
                if conn is None or conn.state != "ready":
                    continue
                while sw.ready and sw.in_flight_bytes < cfg.in_flight_bytes_max:
                    block = sw.ready.popleft()
                    sw.in_flight.append(block)
                    sw.in_flight_bytes += block.size
                    sends.append((conn, sw, block))
        for conn, sw, block in sends:
            payload = block.materialize()
            self._requests.pop(block.request_id, None)
            rid = next_request_id()
            block.request_id = rid
            block.sent_at = now
            self._requests[rid] = sw
            msg = m.AppendBlock(
                self.writer_id, block.first, block.last, block.count, m.NO_OFFSET, sw.name, payload
            )
            conn.sock.send_multipart(codec.encode(msg, rid), copy=False)


def _done_future() -> Future:
    future: Future = Future()
    future.set_result(None)
    return future
