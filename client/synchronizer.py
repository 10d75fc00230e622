"""State synchronizer: shared state kept in one segment, updated by conditional appends.

Each update appends the complete new state as one event at the offset the updater last
read to; if another updater got there first the append fails with
`ConditionalCheckFailed`, and the updater reads the newer state and tries again (a bounded
number of times). Every reader of the segment therefore sees one linear history.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from streamvault.client.connection import SegmentClient
from streamvault.client.protocol import events
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import ConditionalCheckFailed, InternalError
from streamvault.client.protocol.limits import READ_BYTES_MAX

S = TypeVar("S")
UPDATE_ATTEMPTS_MAX = 64


class StateSynchronizer(Generic[S]):
    def __init__(
        self,
        client: SegmentClient,
        segment: str,
        *,
        encode: Callable[[S], bytes],
        decode: Callable[[bytes], S],
    ) -> None:
        self.client = client
        self.segment = segment
        self.name = segment.encode()
        self._encode = encode
        self._decode = decode
        self.writer_id = os.urandom(16)
        self.event_number = 0
        self.offset = 0
        self.state: S | None = None
        self._setup = False

    def fetch_updates(self) -> S | None:
        """Read every update appended since the last call; return the newest state."""
        pending = b""
        while True:
            reply = self.client.call(
                self.segment,
                m.ReadSegment(self.offset + len(pending), READ_BYTES_MAX, 0, self.name),
            )
            data = pending + b"".join(bytes(p) for p in reply.payload)
            found, used = events.split_events(data, self.offset)
            for _, event in found:
                self.state = self._decode(event)
            self.offset += used
            pending = data[used:]
            if self.offset + len(pending) >= reply.segment_length or not reply.payload:
                return self.state

    def _append(self, state: S, expected_offset: int) -> None:
        if not self._setup:
            self.client.call(self.segment, m.SetupAppend(self.writer_id, self.name))
            self._setup = True
        self.event_number += 1
        block = events.frame_events([self._encode(state)])
        ack = self.client.call(
            self.segment,
            m.AppendBlock(
                self.writer_id,
                self.event_number,
                self.event_number,
                1,
                expected_offset,
                self.name,
                block,
            ),
        )
        assert isinstance(ack, m.DataAppended)

    def initialize(self, state: S) -> bool:
        """Write the first state; False if the segment already holds one."""
        try:
            self._append(state, 0)
        except ConditionalCheckFailed:
            return False
        return True

    def update(self, transition: Callable[[S], S | None]) -> S:
        """Apply `transition` to the newest state until it sticks (or returns None)."""
        for _ in range(UPDATE_ATTEMPTS_MAX):
            current = self.fetch_updates()
            if current is None:
                raise InternalError(f"synchronizer {self.segment}: no initial state")
            new = transition(current)
            if new is None:
                return current
            try:
                self._append(new, self.offset)
            except ConditionalCheckFailed:
                continue
            return self.fetch_updates() or new
        raise InternalError(
            f"synchronizer {self.segment}: update lost {UPDATE_ATTEMPTS_MAX} races in a row"
        )
