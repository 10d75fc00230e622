"""One writer's state for one segment: the open batch, blocks ready to send, blocks in
flight, and what to do on acks, on `SetupAppend` replies and on reconnects.

Used by the writer (writer.py) under its lock. A block is immutable once cut: it keeps its
event numbers and bytes until acknowledged, so a resend after reconnect is the same block
and the server deduplicates it by event number.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from streamvault.client.protocol.events import EVENT_HEADER

_HEADERS = tuple(EVENT_HEADER.pack(n) for n in range(4096))
"""Event headers for small sizes, so framing a small event allocates nothing."""
pack_header = EVENT_HEADER.pack


class Block:
    __slots__ = (
        "first",
        "last",
        "count",
        "parts",
        "payload",
        "size",
        "futures",
        "numbers",
        "request_id",
        "sent_at",
    )

    def __init__(
        self,
        first: int,
        last: int,
        count: int,
        parts: list[Any],
        size: int,
        futures: list[Future],
        numbers: list[int] | None,
    ) -> None:
        self.first, self.last, self.count = first, last, count
        self.parts = parts
        self.payload: Any = None
        self.size = size
        self.futures = futures
        self.numbers = numbers  # per-event numbers, only for user-given sequences
        self.request_id = 0
        self.sent_at = 0.0

    def materialize(self) -> Any:
        """The block's payload as one bytes-like object (joined once, kept for resends)."""
        if self.payload is None:
            parts = self.parts
            self.payload = parts[0] if len(parts) == 1 else b"".join(parts)
            self.parts = []
        return self.payload

    def trim_through(self, stored_last: int) -> None:
        """Drop the leading events whose numbers are <= stored_last (already durable)."""
        payload = memoryview(self.materialize()).cast("B")
        numbers = self.numbers or list(range(self.first, self.last + 1))
        keep = next(i for i, n in enumerate(numbers) if n > stored_last)
        pos = 0
        for _ in range(keep):
            (length,) = EVENT_HEADER.unpack_from(payload, pos)
            pos += EVENT_HEADER.size + length
        self.payload = bytes(payload[pos:])
        self.size = len(self.payload)
        self.count -= keep
        self.first = numbers[keep]
        if self.numbers is not None:
            self.numbers = numbers[keep:]


class SegmentWriter:
    __slots__ = (
        "segment",
        "name",
        "parts",
        "count",
        "bytes",
        "future",
        "since",
        "numbers",
        "ready",
        "in_flight",
        "in_flight_bytes",
        "endpoint",
        "state",
        "last_stored",
        "error",
        "setup_request_id",
        "next_route_at",
        "max_sequence",
    )

    def __init__(self, segment: str) -> None:
        self.segment = segment
        self.name = segment.encode()
        self.parts: list[Any] = []
        self.count = 0
        self.bytes = 0
        self.future: Future | None = None
        self.since = 0.0
        self.numbers: list[int] | None = None
        self.ready: deque[Block] = deque()
        self.in_flight: deque[Block] = deque()
        self.in_flight_bytes = 0
        self.endpoint = ""
        self.state = "unrouted"  # unrouted → setup → ready
        self.last_stored = -1
        self.error: BaseException | None = None
        self.setup_request_id = 0
        self.next_route_at = 0.0
        self.max_sequence = -1

    # --- the open batch (user threads, under the writer's lock) --------------------------
    def add(self, data: Any, size: int, count: int, number: int | None) -> Future:
        if not self.count:
            self.future = Future()
            self.since = time.monotonic()
        self.parts.append(data)
        self.count += count
        self.bytes += size
        if number is not None:
            if self.numbers is None:
                self.numbers = []
            self.numbers.append(number)
        assert self.future is not None
        return self.future

    def add_event(self, data: bytes) -> Future:
        size = len(data)
        if not self.count:
            self.future = Future()
            self.since = time.monotonic()
        parts = self.parts
        parts.append(_HEADERS[size] if size < 4096 else pack_header(size))
        parts.append(data)
        self.count += 1
        self.bytes += size + 4
        return self.future  # type: ignore[return-value]

    def cut(self, next_number: int) -> tuple[Block, int]:
        """Close the open batch into a block; return it and the writer's next event number."""
        assert self.count and self.future is not None
        if self.numbers is not None:
            first, last = self.numbers[0], self.numbers[-1]
            numbers: list[int] | None = self.numbers
        else:
            first, last = next_number, next_number + self.count - 1
            next_number = last + 1
            numbers = None
        block = Block(first, last, self.count, self.parts, self.bytes, [self.future], numbers)
        self.ready.append(block)
        self.parts, self.count, self.bytes, self.future, self.numbers = [], 0, 0, None, None
        return block, next_number

    # --- acks and setups (I/O thread, under the writer's lock) ---------------------------
    def acknowledge(self, last: int) -> list[Block]:
        """Blocks durable once the segment holds this writer's events up to `last`."""
        done = []
        in_flight = self.in_flight
        while in_flight and in_flight[0].last <= last:
            block = in_flight.popleft()
            self.in_flight_bytes -= block.size
            done.append(block)
        if last > self.last_stored:
            self.last_stored = last
        return done

    def resume(self, stored_last: int) -> list[Block]:
        """After `SetupAppend` answered `stored_last`: complete what is durable, trim a
        block that is partly durable, and queue the rest for resending, in order."""
        done = self.acknowledge(stored_last)
        while self.ready and self.ready[0].last <= stored_last:
            done.append(self.ready.popleft())
        resend = list(self.in_flight)
        self.in_flight.clear()
        self.in_flight_bytes = 0
        self.ready.extendleft(reversed(resend))
        if self.ready and self.ready[0].first <= stored_last:
            self.ready[0].trim_through(stored_last)
        self.state = "ready"
        return done

    def unacknowledged_bytes(self) -> int:
        return self.bytes + self.in_flight_bytes + sum(b.size for b in self.ready)
