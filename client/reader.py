"""The event reader: one member of a reader group.

A reader owns some of the group's segments (assigned through the group's state
synchronizer, fair share each) and reads them with one outstanding `ReadSegment` per
segment (long-polling at the tail), buffering each reply's whole events as one block (its
bytes and an index of where each event starts) and returning them round-robin across its
segments: one at a time (`read_next_event`: a segment's buffered events, up to
`EVENTS_PER_TURN`, then the next segment's) or as a batch (`read_next_events`: up to
`max_events` of one block of one segment, zero-copy, then the next segment's). The next
read of a segment is asked for while its events are still being returned, once fewer than
a reply's worth of them are left, so the server's work overlaps the caller's; a segment
holds less than two replies' events plus one reply in flight (a reply is
`read_bytes_for(the segments the reader owns)`: 4 MiB for up to 4 segments, less for
more, so a reader holds about `READER_BUFFER_BYTES` at most, plus any batches the caller
keeps). Events of one routing key live in one segment, and a segment is
read by one reader at a time from the position where the previous owner stopped, so each
key's events come back in write order, each once.

Not thread-safe: one thread calls `read_next_event` / `read_next_events`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import numpy as np
import zmq

from streamvault.client import reader_group_state as rgs
from streamvault.client.connection import SegmentClient, next_request_id
from streamvault.client.controller_client import ControllerClient
from streamvault.client.protocol import codec, events, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    InvalidArgument,
    InvalidMessage,
    NoSuchSegment,
    RetryableError,
    SegmentTruncated,
    StreamVaultError,
    error_from_code,
)
from streamvault.client.protocol.limits import EVENT_BYTES_MAX, READ_BYTES_MAX
from streamvault.client.synchronizer import StateSynchronizer

_HEADER_BYTES = events.EVENT_HEADER.size

READER_BUFFER_BYTES = 48 * 1024 * 1024
"""About the most one reader holds across its segments: each segment asks for
`read_bytes_for(segments)` per `ReadSegment` and holds less than three of its replies."""
READ_BYTES_MIN = 64 * 1024
"""Fewest bytes asked for per `ReadSegment`, however many segments a reader owns."""
TAIL_WAIT_MS = 1000
"""Long-poll bound for reads at the tail."""
REBALANCE_INTERVAL_S = 1.0
EVENTS_PER_TURN = 1024
"""Events returned from one segment's buffer before the next segment's turn."""
REPLY_GRACE_S = 5.0
"""A read unanswered for its wait plus this long resets its connection."""


class EventRead(NamedTuple):
    data: bytes
    segment: str
    offset: int

    @property
    def position(self) -> tuple[str, int]:
        return (self.segment, self.offset)

    @property
    def is_checkpoint(self) -> bool:
        return False


class _Block:
    """One reply's whole events: its bytes (a view of the received frame, or bytes), where
    each event's bytes start in them and how long each is, and the next event not yet
    returned."""

    __slots__ = ("data", "base", "starts", "lengths", "count", "next", "starts_l", "lengths_l")

    def __init__(
        self, data: memoryview | bytes, base: int, starts: np.ndarray, lengths: np.ndarray
    ) -> None:
        self.data = data
        self.base = base  # segment offset of data[0]
        self.starts, self.lengths = starts, lengths
        self.count = len(starts)
        self.next = 0
        # the same index as lists, made (and `data` made bytes) when `read_next_event` first
        # takes from the block: a list item is an int, where indexing an array makes a numpy
        # scalar per event, and a bytes slice is one C call, where a view's slice and its
        # bytes() are two (0.33 vs 0.54 us per 1000-byte event)
        self.starts_l: list[int] | None = None
        self.lengths_l: list[int] = []


class EventBatch:
    """Events of one segment returned by one `read_next_events` call, in write order.

    `len(batch)` events; `batch[i]` is event i's bytes, iterating gives `EventRead`s;
    `segment` the segment they were read from, `offsets` the segment offset of each (an
    int64 array), `position` where the segment's next event starts (as
    `EventRead.position`, for a stream cut); `array()` a read-only 2-D uint8 view, one
    event per row, when every event has the same size (the twin of `write_events` with a
    2-D array). Nothing is copied: the batch is a view of the received reply, which it
    keeps (at most `READ_BYTES_MAX`, or one event) for as long as the batch is kept.
    """

    __slots__ = ("segment", "_data", "_base", "_starts", "_lengths")

    def __init__(
        self,
        segment: str,
        data: memoryview | bytes,
        base: int,
        starts: np.ndarray,
        lengths: np.ndarray,
    ) -> None:
        self.segment = segment
        self._data, self._base = data, base
        self._starts, self._lengths = starts, lengths

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> bytes:
        start = int(self._starts[index])
        return bytes(self._data[start : start + int(self._lengths[index])])

    def __iter__(self) -> Iterator[EventRead]:
        data, base, segment = self._data, self._base, self.segment
        for start, length in zip(self._starts.tolist(), self._lengths.tolist(), strict=True):
            yield EventRead(
                bytes(data[start : start + length]), segment, base + start - _HEADER_BYTES
            )

    @property
    def offsets(self) -> np.ndarray:
        return self._starts + (self._base - _HEADER_BYTES)

    @property
    def position(self) -> tuple[str, int]:
        return (self.segment, self._base + int(self._starts[-1]) + int(self._lengths[-1]))

    def array(self) -> np.ndarray:
        """The events as rows of a read-only (count, size) uint8 array, without a copy.
        Raises InvalidArgument if their sizes differ."""
        width = int(self._lengths[0])
        if not (self._lengths == width).all():
            raise InvalidArgument(
                "EventBatch.array: events of different sizes "
                f"({int(self._lengths.min())}..{int(self._lengths.max())} bytes)",
                field="events",
            )
        rows = np.ndarray(
            (len(self._starts), width),
            np.uint8,
            buffer=self._data,
            offset=int(self._starts[0]),
            strides=(width + _HEADER_BYTES, 1),
        )
        rows.flags.writeable = False
        return rows


_T = TypeVar("_T")


class _SegmentRead:
    __slots__ = (
        "segment",
        "name",
        "position",
        "fetch_offset",
        "pending",
        "events",
        "request_id",
        "sent_at",
        "end_seen",
        "retry_at",
    )

    def __init__(self, segment: str, offset: int) -> None:
        self.segment = segment
        self.name = segment.encode()
        self.position = offset  # offset of the next event not yet returned
        self.fetch_offset = offset  # where the next ReadSegment starts
        self.pending = b""  # a partial event at the end of what was fetched
        self.events: deque[_Block] = deque()  # never an exhausted block
        self.request_id = 0
        self.sent_at = 0.0
        self.end_seen = False
        self.retry_at = 0.0


class EventStreamReader:
    def __init__(
        self,
        controller_endpoint: str,
        scope: str,
        group: str,
        reader_id: str,
        *,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.scope, self.group, self.reader_id = scope, group, reader_id
        self.ctx = ctx or zmq.Context.instance()
        self._controller = ControllerClient(controller_endpoint, ctx=self.ctx)
        info = self._controller.call(m.GetReaderGroup(scope=scope, group=group))
        self._client = SegmentClient(self.ctx, self._controller.endpoint_for)
        self._sync: StateSynchronizer[rgs.GroupState] = StateSynchronizer(
            self._client, info.state_segment, encode=rgs.encode_state, decode=rgs.decode_state
        )
        self._sync.update(lambda s: rgs.add_reader(s, reader_id))
        self._owned: dict[str, _SegmentRead] = {}
        self._by_request: dict[int, _SegmentRead] = {}
        self._socks: dict[str, zmq.Socket] = {}
        self._endpoints: dict[str, str] = {}
        self._next_rebalance = 0.0
        self._round_robin: deque[_SegmentRead] = deque()
        self._serving: _SegmentRead | None = None  # whose buffered events are returned now
        self._turn_left = 0  # events it may still return before the slow path runs
        self._map_stale = False
        self._closed = False
        self._read_bytes = read_bytes_for(0)  # per ReadSegment, for the segments owned

    # --- public ----------------------------------------------------------------------
    def read_next_event(self, timeout: float) -> EventRead | None:
        """The next event, or None if none arrives within `timeout` seconds."""
        seg = self._serving
        if (
            self._turn_left
            and seg is not None
            and seg.events
            and time.monotonic() < self._next_rebalance
        ):  # the fast path
            self._turn_left -= 1
            return _take_event(seg)
        return self._read(timeout, self._start_turn)

    def read_next_events(
        self, timeout: float, max_events: int = EVENTS_PER_TURN
    ) -> EventBatch | None:
        """The next events of one segment, at most `max_events` and at most one reply's,
        as one `EventBatch`; None if none arrive within `timeout` seconds. Each call is
        one turn: the next call takes from the reader's next segment that has events."""
        if type(max_events) is not int or max_events < 1:
            raise InvalidArgument(
                f"read_next_events: max_events must be an int >= 1, got {max_events!r}",
                field="max_events",
            )
        return self._read(timeout, lambda seg: self._batch_turn(seg, max_events))

    def _read(self, timeout: float, take: Callable[[_SegmentRead], _T]) -> _T | None:
        """Wait up to `timeout` seconds for a segment with buffered events; `take` from it."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= self._next_rebalance:
                self._rebalance()
                self._next_rebalance = now + REBALANCE_INTERVAL_S
            seg = self._next_turn()
            if seg is not None:
                return take(seg)
            if self._by_request:  # replies already here count before any timeout does
                self._poll(0.0)
                seg = self._next_turn()
                if seg is not None:
                    return take(seg)
            self._request_reads(now)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._poll(min(remaining, max(0.001, self._next_rebalance - time.monotonic())))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        positions = {s.segment: s.position for s in self._owned.values()}
        try:
            self._sync.update(lambda s: rgs.remove_reader(s, self.reader_id, positions))
        finally:
            for sock in self._socks.values():
                sock.close(0)
            self._socks.clear()
            self._client.close()
            self._controller.close()

    def __enter__(self) -> EventStreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- segments ----------------------------------------------------------------------
    def _rebalance(self) -> None:
        state = self._sync.fetch_updates()
        assert state is not None
        mine = {s.segment for s in rgs.owned(state, self.reader_id)}
        for name in list(self._owned):  # taken from us (e.g. declared offline)
            if name not in mine:
                self._drop(name)
        excess = len(mine) - rgs.fair_share(state)
        for name in sorted(mine)[: max(0, excess)]:
            seg = self._owned.get(name)
            offset = seg.position if seg is not None else None
            state = self._sync.update(
                lambda s, n=name, o=offset: rgs.release(
                    s, self.reader_id, n, o if o is not None else _slot(s, n).offset
                )
            )
            self._drop(name)
        state = self._sync.update(lambda s: rgs.acquire(s, self.reader_id))
        for slot in rgs.owned(state, self.reader_id):
            if slot.segment not in self._owned:
                seg = _SegmentRead(slot.segment, slot.offset)
                self._owned[slot.segment] = seg
                self._round_robin.append(seg)
        self._read_bytes = read_bytes_for(len(self._owned))

    def _drop(self, name: str) -> None:
        seg = self._owned.pop(name, None)
        if seg is self._serving:
            self._serving, self._turn_left = None, 0
        if seg is not None:
            self._by_request.pop(seg.request_id, None)
            self._round_robin.remove(seg)
            self._read_bytes = read_bytes_for(len(self._owned))

    def _complete(self, seg: _SegmentRead) -> None:
        self._sync.update(lambda s: rgs.complete(s, self.reader_id, seg.segment, seg.position))
        self._drop(seg.segment)
        self._next_rebalance = 0.0  # pick up what is left

    def _next_turn(self) -> _SegmentRead | None:
        """The next segment (round-robin) with buffered events; completes the ones read to
        their end on the way."""
        self._serving, self._turn_left = None, 0
        rr = self._round_robin
        for _ in range(len(rr)):
            seg = rr[0]
            rr.rotate(-1)
            if seg.events:
                return seg
            if seg.end_seen and not seg.pending and not seg.request_id:
                self._complete(seg)
                return self._next_turn()
        return None

    def _start_turn(self, seg: _SegmentRead) -> EventRead:
        """A segment's turn of `read_next_event`: its first event now, the fast path
        returns the rest of the turn."""
        event = _take_event(seg)
        self._serving, self._turn_left = seg, EVENTS_PER_TURN - 1
        self._read_ahead(seg)
        return event

    def _batch_turn(self, seg: _SegmentRead, max_events: int) -> EventBatch:
        """A segment's turn of `read_next_events`: one batch."""
        batch = _take_batch(seg, max_events)
        self._read_ahead(seg)
        return batch

    # --- I/O ---------------------------------------------------------------------------
    def _sock(self, segment: str) -> zmq.Socket:
        endpoint = self._endpoints.get(segment)
        if endpoint is None:
            endpoint = self._controller.endpoint_for(segment, refresh=self._map_stale)
            self._endpoints[segment] = endpoint
            self._map_stale = False
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = self._socks[endpoint] = transport.client_socket(self.ctx, endpoint)
        return sock

    def _request_reads(self, now: float) -> None:
        for seg in self._owned.values():
            if seg.end_seen:
                continue
            if seg.request_id:
                if now - seg.sent_at > TAIL_WAIT_MS / 1000 + REPLY_GRACE_S:
                    self._reset(seg)
                continue
            self._read_ahead(seg, now)

    def _request(self, seg: _SegmentRead, now: float) -> None:
        """Ask for the segment's next bytes (nothing else outstanding for it)."""
        try:
            sock = self._sock(seg.segment)
        except RetryableError:
            seg.retry_at = now + 0.2
            return
        rid = next_request_id()
        request = m.ReadSegment(seg.fetch_offset, self._read_bytes, TAIL_WAIT_MS, seg.name)
        sock.send_multipart(
            codec.encode(request, rid, timeout_ms=TAIL_WAIT_MS + 1000, flags=codec.FLAG_ZSTD_OK)
        )
        seg.request_id, seg.sent_at = rid, now
        self._by_request[rid] = seg

    def _reset(self, seg: _SegmentRead) -> None:
        """No answer in time: drop the connection (and anything queued on it) and re-route."""
        endpoint = self._endpoints.pop(seg.segment, None)
        sock = self._socks.pop(endpoint, None) if endpoint else None
        if sock is not None:
            sock.close(0)
        for other in self._owned.values():
            if other.request_id and self._endpoints.get(other.segment) in (endpoint, None):
                self._by_request.pop(other.request_id, None)
                other.request_id = 0
        self._by_request.pop(seg.request_id, None)
        seg.request_id = 0
        seg.retry_at = time.monotonic() + 0.1
        self._map_stale = True

    def _poll(self, timeout_s: float) -> None:
        """Take the replies that arrive within `timeout_s` (0: those already here)."""
        if not self._socks:
            if timeout_s <= 0:
                return
            time.sleep(min(timeout_s, 0.05))
            return
        poller = zmq.Poller()
        for sock in self._socks.values():
            poller.register(sock, zmq.POLLIN)
        for sock, _ in poller.poll(int(timeout_s * 1000) + 1 if timeout_s > 0 else 0):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_reply(frames)

    def _on_reply(self, frames: list[Any]) -> None:
        try:
            header, body = codec.decode(frames)
        except StreamVaultError:
            return
        seg = self._by_request.pop(header.request_id, None)
        if seg is None or seg.segment not in self._owned:
            return
        seg.request_id = 0
        if isinstance(body, m.ErrorReply):
            self._on_error(seg, error_from_code(body.code, body.message, body.fields))
            return
        if not isinstance(body, m.SegmentRead) or body.offset != seg.fetch_offset:
            return
        parts = [codec._view(p) for p in body.payload]
        base = seg.fetch_offset
        seg.fetch_offset += sum(len(p) for p in parts)
        if len(parts) == 1:
            _add_part(seg, parts[0], base)
        else:  # a reply of many frames (one per cache block): one block, one copy
            joined = b"".join([seg.pending, *parts])
            base -= len(seg.pending)
            seg.pending = b""
            _add_part(seg, joined, base)
        if body.end_of_segment and seg.fetch_offset >= body.segment_length:
            seg.end_seen = True
        else:
            self._read_ahead(seg)

    def _read_ahead(self, seg: _SegmentRead, now: float | None = None) -> None:
        """Ask for the segment's next bytes if nothing is outstanding for it and less than
        a reply's worth (`_read_bytes`) of its events are left to return (none, or a
        reply's tail: so it holds less than two replies' events, plus the reply in
        flight)."""
        if (
            not seg.request_id
            and not seg.end_seen
            and seg.fetch_offset - len(seg.pending) - seg.position < self._read_bytes
        ):
            now = time.monotonic() if now is None else now
            if now >= seg.retry_at:
                self._request(seg, now)

    def _on_error(self, seg: _SegmentRead, exc: StreamVaultError) -> None:
        if isinstance(exc, RetryableError):
            self._reset(seg)
        elif isinstance(exc, SegmentTruncated):
            start = int(exc.fields.get("start_offset", seg.fetch_offset))
            seg.fetch_offset = seg.position = start
            seg.pending = b""
        elif isinstance(exc, NoSuchSegment):
            seg.end_seen = True  # deleted: nothing more will ever be read from it
            seg.pending = b""
        else:
            raise exc


def _add_part(seg: _SegmentRead, part: memoryview | bytes, base: int) -> None:
    """Buffer the whole events of `part` (a reply's frame, or bytes joined from several, at
    segment offset `base`) as blocks: the event begun by the last part's tail
    (`seg.pending`), completed with this part's first bytes, is copied into its own block;
    the events after it stay in `part` (the block keeps `part` itself, no copy); a partial
    event at the end is copied into `seg.pending`."""
    view = memoryview(part)
    pending = seg.pending
    skip = 0  # bytes of `part` that completed the pending event
    if pending:
        if len(pending) < _HEADER_BYTES:
            head = pending + bytes(view[: _HEADER_BYTES - len(pending)])
            if len(head) < _HEADER_BYTES:
                seg.pending = head
                return
        else:
            head = pending
        (length,) = events.EVENT_HEADER.unpack_from(head)
        if length > EVENT_BYTES_MAX:  # before waiting for more of it
            raise InvalidMessage(
                f"read: event length {length} at offset {base - len(pending)} > {EVENT_BYTES_MAX}"
            )
        skip = _HEADER_BYTES + length - len(pending)
        if skip > len(view):
            seg.pending = pending + bytes(view)
            return
        bridge = pending + bytes(view[:skip])
        starts, lengths, _ = events.index_events(bridge)
        seg.events.append(_Block(bridge, base - len(pending), starts, lengths))
        seg.pending = b""
    starts, lengths, used = events.index_events(view[skip:])
    if used:
        seg.events.append(_Block(part, base, starts + skip if skip else starts, lengths))
    seg.pending = bytes(view[skip + used :])  # its own bytes: never a view of the frame


def read_bytes_for(segments: int) -> int:
    """Bytes a reader owning `segments` segments asks for per `ReadSegment`: its share of
    `READER_BUFFER_BYTES` (a segment holds up to three replies), within READ_BYTES_MIN ..
    READ_BYTES_MAX. Larger replies mean fewer requests for the same bytes: reading 4 MiB
    instead of 1 MiB per request halved a catch-up reader's CPU (0.08-0.09 of a core
    against 0.16-0.19 at 100 MB/s in perf/bench_catchup.py)."""
    share = READER_BUFFER_BYTES // (3 * max(1, segments))
    return max(READ_BYTES_MIN, min(READ_BYTES_MAX, share))


def _take_event(seg: _SegmentRead) -> EventRead:
    """The segment's next buffered event (it has one)."""
    block = seg.events[0]
    if block.starts_l is None:
        block.starts_l, block.lengths_l = block.starts.tolist(), block.lengths.tolist()
        if type(block.data) is not bytes:  # a frame's view: copied once, sliced per event
            block.data = bytes(block.data)
    index = block.next
    start = block.starts_l[index]
    end = start + block.lengths_l[index]
    block.next = index + 1
    if index + 1 == block.count:
        seg.events.popleft()
    seg.position = block.base + end
    return EventRead(block.data[start:end], seg.segment, block.base + start - _HEADER_BYTES)


def _take_batch(seg: _SegmentRead, max_events: int) -> EventBatch:
    """The segment's next buffered events, at most `max_events` of its first block."""
    block = seg.events[0]
    first = block.next
    last = min(block.count, first + max_events)
    starts, lengths = block.starts[first:last], block.lengths[first:last]
    block.next = last
    if last == block.count:
        seg.events.popleft()
    seg.position = block.base + int(starts[-1]) + int(lengths[-1])
    return EventBatch(seg.segment, block.data, block.base, starts, lengths)


def _slot(state: rgs.GroupState, segment: str) -> rgs.SegmentSlot:
    return next(s for s in state.segments if s.segment == segment)
