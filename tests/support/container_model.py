"""The stateful model of a container over a real durable log (files, committer thread),
shared by the model tests: appends, commits, crashes (acks lost, torn tails), recovery and
client retries. After every step, what the container serves must be every acknowledged event
exactly once, per writer in order, and nothing nobody wrote."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from streamvault.client.protocol import events
from streamvault.client.protocol import messages as m
from streamvault.dataplane.container import Container
from streamvault.dataplane.log import Committer, LocalDurableLog, LocalFileStore, LogConfig
from streamvault.dataplane.log.framing import RECORD_HEADER_BYTES, parse_header, record_bytes
from streamvault.dataplane.log.probe import durability_mode

SEG = b"s/t/0"
PEER = b"p"
WRITERS = [bytes([65 + i]) * 16 for i in range(3)]
CONFIG = LogConfig(ledger_bytes=64 * 1024 * 1024, frame_payload_bytes=32 * 1024, buffers=2)


class ContainerOverLog(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="sv-model-"))
        self.next_number = {w: 0 for w in WRITERS}
        self.acked: dict[bytes, int] = {w: -1 for w in WRITERS}  # highest acked event
        self.sent: dict[bytes, list[tuple[int, int, bytes]]] = {w: [] for w in WRITERS}
        self.unacked: dict[bytes, list[m.AppendBlock]] = {w: [] for w in WRITERS}
        self.must_resend: set[bytes] = set()
        self._open()

    # --- plumbing ------------------------------------------------------------------------
    def _open(self) -> None:
        self.done: list = []
        self.cond = threading.Condition()
        self.log = self._new_log()
        self.container = Container(0, frame_payload_bytes=CONFIG.frame_payload_bytes)
        for location, payload in self.log.recover():
            self.container.replay(payload, location.ledger_id, location.record_pos)
        self.log.start()
        self.committer.start()
        if SEG not in self.container.segments:
            self.container.create_segment(PEER, 0, SEG)
            self._commit()
        for writer in WRITERS:
            setup = self.container.setup_append(PEER, 0, m.SetupAppend(writer, SEG))
            assert setup is not None

    def _new_log(self) -> Any:
        """The log under test and its write thread (`self.committer`), not yet started."""
        self.committer = Committer(self._deliver, lambda exc: None)
        return LocalDurableLog(
            str(self.root / "log"),
            key="c0",
            store=LocalFileStore(str(self.root / "coord")),
            committer=self.committer,
            mode=durability_mode(str(self.root)),
            config=CONFIG,
        )

    def _deliver(self, done: list) -> None:
        with self.cond:
            self.done.extend(done)
            self.cond.notify_all()

    def _submit_all(self) -> int:
        submitted = 0
        while self.container.queue:
            built = self.container.build_frame(self.log.acquire_buffer)
            if built is None:
                self._complete(wait_for=1)
                continue
            buffer, size, token = built
            self.log.submit(buffer, size, token)
            submitted += 1
        return submitted

    def _complete(self, wait_for: int = 0, *, apply: bool = True) -> list:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.done) >= wait_for, timeout=30)
            done, self.done = self.done, []
        replies = []
        for log_, buffer, token, location in done:
            log_.release(buffer)
            if apply:
                effects, _ = self.container.committed(
                    token, location.ledger_id, location.record_pos
                )
                replies += [frames for _, frames in effects]
        return replies

    def _commit(self) -> None:
        self._submit_all()
        while self.log.in_flight:
            for frames in self._complete(wait_for=1):
                self._on_reply(frames)

    def _on_reply(self, frames) -> None:
        from streamvault.client.protocol import codec

        _, body = codec.decode(frames)
        if isinstance(body, m.DataAppended):
            writer = body.writer_id
            self.acked[writer] = max(self.acked[writer], body.last_event_number)
            self.unacked[writer] = [
                b for b in self.unacked[writer] if b.last_event_number > self.acked[writer]
            ]

    # --- rules ---------------------------------------------------------------------------
    @rule(writer=st.sampled_from(WRITERS), count=st.integers(1, 6), size=st.integers(0, 3000))
    def append(self, writer: bytes, count: int, size: int) -> None:
        if writer in self.must_resend:  # as the client does: resend first after a reconnect
            self.retry(writer)
        first = self.next_number[writer]
        self.next_number[writer] = first + count
        payloads = [b"%s:%d:" % (writer[:1], n) + b"." * size for n in range(first, first + count)]
        block = m.AppendBlock(
            writer, first, first + count - 1, count, -1, SEG, events.frame_events(payloads)
        )
        self.sent[writer].append((first, first + count - 1, block.payload))
        self.unacked[writer].append(block)
        reply = self.container.append(PEER, 1, block, len(block.payload))
        assert reply is None, "a new block is queued, never answered at once"

    @rule()
    def commit(self) -> None:
        self._commit()

    @rule(durable=st.booleans(), torn=st.booleans())
    def crash(self, durable: bool, torn: bool) -> None:
        """Kill the process: queued operations vanish; if `durable`, the in-flight records
        reached the disk but their acks were lost; `torn` damages the last such record."""
        submitted = self._submit_all() if durable else 0
        if durable:
            while self.log.in_flight:
                self._complete(wait_for=1, apply=False)  # written and synced, acks lost
        self.committer.stop()
        os.close(self.log._lock_fd)
        if torn and submitted:
            self._tear_last_record()
        self._open()
        self.must_resend = set(WRITERS)

    def _tear_last_record(self) -> None:
        path = sorted((self.root / "log").glob("ledger-*.log"))[-1]
        data = memoryview(path.read_bytes())
        pos, last = 0, None
        while (header := parse_header(data, pos)) is not None:
            last = pos
            pos += record_bytes(header.payload_bytes)
        if last is not None:
            with open(path, "r+b") as f:
                f.seek(last + RECORD_HEADER_BYTES)
                f.write(b"\xde\xad")

    @rule(writer=st.sampled_from(WRITERS))
    def retry(self, writer: bytes) -> None:
        """The client resends its unacknowledged blocks, unchanged, after SetupAppend."""
        self.must_resend.discard(writer)
        for block in list(self.unacked[writer]):
            reply = self.container.append(PEER, 2, block, len(block.payload))
            if reply is not None:
                self._on_reply(reply)
        self._commit()

    # --- the check -----------------------------------------------------------------------
    @invariant()
    def serves_acknowledged_events_exactly_once_in_order(self) -> None:
        seg = self.container.segments[SEG]
        data = b""
        if seg.length:
            data = b"".join(
                self.log.read(p.ledger_id, p.position, p.length) for p in seg.plan(0, seg.length)
            )
        assert len(data) == seg.length
        found, used = events.split_events(data, 0)
        assert used == len(data), "the segment ends on an event boundary"
        numbers: dict[bytes, list[int]] = {w[:1]: [] for w in WRITERS}
        for _, event in found:
            tag, number, _ = event.split(b":", 2)
            numbers[tag].append(int(number))
        for writer in WRITERS:
            got = numbers[writer[:1]]
            assert got == sorted(set(got)), f"duplicate or reordered events of {writer[:1]}"
            assert set(range(self.acked[writer] + 1)) <= set(got), "an acknowledged event is lost"
            assert not got or got[-1] < self.next_number[writer], "phantom event"
            assert seg.writers.get(writer, -1) == (got[-1] if got else -1)

    def teardown(self) -> None:
        self.committer.stop()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
