"""The durable log on real files: records, group commit, recovery, torn tails, corruption,
rollover."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvault.client.protocol.errors import DataCorruption, StorageError
from streamvault.dataplane.log import Committer, LocalDurableLog, LocalFileStore, LogConfig
from streamvault.dataplane.log.framing import (
    BLOCK_BYTES,
    RECORD_HEADER_BYTES,
    check_record,
    parse_header,
    record_bytes,
    seal_record,
)
from streamvault.dataplane.log.ledger import ledger_path
from streamvault.dataplane.log.local_log import WriteBuffer
from streamvault.dataplane.log.metadata import BadVersion, LogMetadata
from streamvault.dataplane.log.probe import MODE_BUFFERED, durability_mode

SMALL = LogConfig(ledger_bytes=64 * 1024 * 1024, frame_payload_bytes=64 * 1024, buffers=4)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=9000),
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 30),
    st.integers(-1, 1 << 40),
)
def test_record_round_trip_and_any_bit_flip_is_detected(payload, ledger, entry, epoch, lac):
    buffer = WriteBuffer(len(payload) + 1, pooled=False)
    try:
        buffer.payload[: len(payload)] = payload
        total = seal_record(
            buffer.view, len(payload), ledger_id=ledger, entry_id=entry, epoch=epoch, lac=lac
        )
        assert total == record_bytes(len(payload)) and total % BLOCK_BYTES == 0
        data = bytearray(buffer.view[:total])
    finally:
        buffer.close()
    header = parse_header(memoryview(data), 0)
    assert header is not None and header.ledger_id == ledger and header.entry_id == entry
    assert check_record(memoryview(data), 0, header)
    assert bytes(data[RECORD_HEADER_BYTES : RECORD_HEADER_BYTES + len(payload)]) == payload
    flip = (entry * 7919 + len(payload)) % (RECORD_HEADER_BYTES + len(payload))
    data[flip] ^= 0x10
    header = parse_header(memoryview(data), 0)
    assert header is None or not check_record(memoryview(data), 0, header)


class LogHarness:
    """A container's log with its own committer; completions collected in order."""

    def __init__(self, root: Path, config: LogConfig = SMALL) -> None:
        self.root = root
        self.config = config
        self.done: list = []
        self.released = 0
        self.cond = threading.Condition()
        self.fatal: list[BaseException] = []
        self.committer = Committer(self._deliver, self._on_fatal)
        self.log = LocalDurableLog(
            str(root / "log"),
            key="c0",
            store=LocalFileStore(str(root / "coord")),
            committer=self.committer,
            mode=durability_mode(str(root)),
            config=config,
        )

    def _deliver(self, done: list) -> None:
        with self.cond:
            self.done.extend(done)
            self.cond.notify_all()

    def _on_fatal(self, exc: BaseException) -> None:
        with self.cond:
            self.fatal.append(exc)
            self.cond.notify_all()

    def recover(self) -> list[bytes]:
        out = [bytes(payload) for _, payload in self.log.recover()]
        self.log.start()
        self.committer.start()
        return out

    def append(self, payloads: list[bytes]) -> None:
        target = len(self.done) + len(payloads)
        for payload in payloads:
            while (buffer := self.log.acquire_buffer(len(payload))) is None:
                self._wait(self.released + 1)
            buffer.payload[: len(payload)] = payload
            self.log.submit(buffer, len(payload), payload)
        self._wait(target)

    def _wait(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.done) >= count or self.fatal, timeout=30)
            assert not self.fatal, self.fatal
            completed = self.done[self.released :]
            self.released = len(self.done)
        for log_, buffer, token, _ in completed:
            if buffer is None:  # a task's completion: truncation, as the worker takes it
                log_.forget_ledgers(token[1])
            else:
                log_.release(buffer)

    def close(self) -> None:
        self.committer.stop()
        self.log.close()


def _payloads(count: int, seed: int = 0) -> list[bytes]:
    return [bytes([(seed + i) % 256]) * (1 + (i * 997) % 20_000) for i in range(count)]


def test_records_come_back_in_order_after_reopen(tmp_path):
    harness = LogHarness(tmp_path)
    assert harness.recover() == []
    written = _payloads(50)
    harness.append(written)
    assert [d[2] for d in harness.done] == written, "completions must come in submission order"
    harness.close()
    again = LogHarness(tmp_path)
    assert again.recover() == written
    again.close()


def _open_ledger_file(root: Path) -> Path:
    files = sorted((root / "log").glob("ledger-*.log"))
    return files[-1]


def _crash_after(tmp_path, count: int) -> tuple[list[bytes], Path]:
    harness = LogHarness(tmp_path)
    harness.recover()
    written = _payloads(count)
    harness.append(written)
    path = _open_ledger_file(tmp_path)
    harness.committer.stop()  # "crash": no close, the ledger stays open in metadata
    os.close(harness.log._lock_fd)  # what process death does to the owner lock
    return written, path


def _record_positions(path: Path, count: int) -> list[int]:
    data = memoryview(path.read_bytes())
    positions, pos = [], 0
    for _ in range(count):
        header = parse_header(data, pos)
        assert header is not None
        positions.append(pos)
        pos += record_bytes(header.payload_bytes)
    return positions


@pytest.mark.parametrize("damage", ["zeroed", "garbage", "short"])
def test_torn_final_record_is_cut_and_recovery_is_idempotent(tmp_path, damage):
    written, path = _crash_after(tmp_path, 10)
    last = _record_positions(path, 10)[-1]
    with open(path, "r+b") as f:
        f.seek(last + (RECORD_HEADER_BYTES if damage == "short" else 0))
        f.write(b"\0" * 64 if damage != "garbage" else os.urandom(64))
    for _ in range(2):  # recovering twice gives the same log
        harness = LogHarness(tmp_path)
        assert harness.recover() == written[:9]
        harness.close()


def test_corruption_of_a_record_that_a_later_record_confirmed_stops_recovery(tmp_path):
    written, path = _crash_after(tmp_path, 10)
    positions = _record_positions(path, 10)
    with open(path, "r+b") as f:  # a bit flip in the middle of durable data
        f.seek(positions[3] + RECORD_HEADER_BYTES + 5)
        byte = f.read(1)
        f.seek(positions[3] + RECORD_HEADER_BYTES + 5)
        f.write(bytes([byte[0] ^ 1]))
    harness = LogHarness(tmp_path)
    with pytest.raises(DataCorruption, match="confirms it durable"):
        harness.recover()
    harness.log.close()


def test_corruption_in_a_closed_ledger_stops_recovery(tmp_path):
    written, path = _crash_after(tmp_path, 5)
    harness = LogHarness(tmp_path)
    assert harness.recover() == written  # closes ledger 1 at entry 4, opens ledger 2
    harness.close()
    with open(path, "r+b") as f:
        f.seek(_record_positions(path, 5)[4] + RECORD_HEADER_BYTES)
        f.write(b"X")
    broken = LogHarness(tmp_path)
    with pytest.raises(DataCorruption, match="closed at entry 4"):
        broken.recover()
    broken.log.close()


def test_ledgers_roll_over_and_all_records_survive(tmp_path):
    config = LogConfig(ledger_bytes=64 * 1024 * 1024, frame_payload_bytes=1024 * 1024, buffers=4)
    harness = LogHarness(tmp_path, config)
    harness.recover()
    written = [bytes([i]) * (1024 * 1024 - 100) for i in range(140)]  # > 2 ledgers
    harness.append(written)
    harness.close()
    assert len(list((tmp_path / "log").glob("ledger-*.log"))) >= 3
    again = LogHarness(tmp_path, config)
    assert again.recover() == written
    again.close()


def test_truncated_ledgers_are_retired_without_holding_up_commits_and_reused(tmp_path):
    """Truncation changes the metadata on the committer thread; once the owner has taken
    its completion (`forget_ledgers`, closing its descriptors) the files are retired on the
    deleter's thread (kept for reuse, up to `free_ledgers_max`, else removed): with that
    held up, the log still commits. The next ledgers reuse the kept files, whose old records
    (another ledger's) are never taken for theirs, also across a reopen."""
    config = LogConfig(
        ledger_bytes=20 * 1024 * 1024,
        frame_payload_bytes=1024 * 1024,
        buffers=4,
        free_ledgers_max=2,
    )
    log_dir = tmp_path / "log"
    harness = LogHarness(tmp_path, config)
    harness.recover()
    written = [bytes([i]) * (1024 * 1024 - 100) for i in range(80)]  # > 3 ledgers
    harness.append(written)
    ledgers = [i.ledger_id for i in harness.log.meta.ledgers]
    assert len(ledgers) >= 4
    held, retiring = threading.Event(), threading.Event()
    retire = harness.log._retire

    def slow_retire(files):
        retiring.set()
        assert held.wait(30)
        retire(files)

    harness.log._retire = slow_retire
    harness.log.truncate_before(ledgers[2])
    harness.append([b"the cut taken"])  # its completion hands the files to the deleter
    assert retiring.wait(30), "the deleter never started on the truncated files"
    later = [b"after the cut"] * 3
    harness.append(later)  # commits while retiring is held up (it waited here before)
    assert [d[2] for d in harness.done if d[1] is not None][-3:] == later
    assert [i.ledger_id for i in harness.log.meta.ledgers][0] == ledgers[2]
    held.set()
    deadline = time.monotonic() + 30  # bounded: the deleter keeps both files
    while len(list(log_dir.glob("free-*.log"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    more = [bytes([200 + i % 50]) * (1024 * 1024 - 100) for i in range(40)]  # 2 rollovers
    harness.append(more)
    assert harness.log.counters["ledgers_recycled"] == 2
    open_ledger = harness.log.meta.ledgers[-1].ledger_id
    harness.close()
    for ledger_id in ledgers[:2]:
        assert not os.path.exists(ledger_path(str(log_dir), ledger_id))
    assert not list(log_dir.glob("free-*.log")), "both kept files were taken"
    data = memoryview(Path(ledger_path(str(log_dir), open_ledger)).read_bytes())
    owners = {
        h.ledger_id for pos in range(0, len(data), BLOCK_BYTES) if (h := parse_header(data, pos))
    }
    assert owners - {open_ledger}, "the open ledger's file still holds a deleted one's records"
    data.release()

    again = LogHarness(tmp_path, config)
    recovered = again.recover()  # the recycled ledger's old records are not its own
    assert recovered[-(len(later) + len(more) + 1) :] == [b"the cut taken", *later, *more]
    assert len(recovered) < len(written) + len(later) + len(more)
    again.close()


def test_two_owners_of_one_log_are_refused(tmp_path):
    first = LogHarness(tmp_path)
    first.recover()
    with pytest.raises(StorageError, match="owned by another process"):
        LogHarness(tmp_path)
    first.close()


def test_metadata_changes_only_by_compare_and_set(tmp_path):
    store = LocalFileStore(str(tmp_path))
    assert store.get("k") == (None, 0)
    version = store.cas("k", LogMetadata(epoch=1), 0)
    with pytest.raises(BadVersion):
        store.cas("k", LogMetadata(epoch=2), 0)
    store.cas("k", LogMetadata(epoch=2), version)
    assert store.get("k")[0].epoch == 2


def test_unreferenced_ledger_files_are_collected(tmp_path):
    harness = LogHarness(tmp_path)
    harness.recover()
    harness.append(_payloads(3))
    harness.close()
    orphan = Path(ledger_path(str(tmp_path / "log"), 999))
    orphan.write_bytes(b"\0" * BLOCK_BYTES)
    again = LogHarness(tmp_path)
    assert len(again.recover()) == 3
    assert not orphan.exists()
    again.close()


def test_durability_mode_is_probed_and_can_be_forced_to_buffered(tmp_path, monkeypatch):
    assert durability_mode(str(tmp_path), allow_direct=False) == MODE_BUFFERED
    monkeypatch.setattr(os, "O_DIRECT", 0)  # a platform without O_DIRECT
    assert durability_mode(str(tmp_path)) == MODE_BUFFERED


def test_buffered_mode_log_recovers_like_direct_mode(tmp_path, monkeypatch):
    harness = LogHarness(tmp_path)
    harness.log.mode = MODE_BUFFERED
    harness.recover()
    written = _payloads(20)
    harness.append(written)
    harness.close()
    again = LogHarness(tmp_path)
    assert again.recover() == written
    again.close()


def test_fsync_error_is_fail_stop_and_nothing_of_that_cycle_is_acknowledged(tmp_path, monkeypatch):
    harness = LogHarness(tmp_path)
    harness.recover()
    harness.append(_payloads(3))
    acknowledged = len(harness.done)
    calls = []

    def failing_fdatasync(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    buffer = harness.log.acquire_buffer(100)
    buffer.payload[:5] = b"hello"
    harness.log.submit(buffer, 5, b"hello")
    with harness.cond:
        assert harness.cond.wait_for(lambda: harness.fatal, timeout=30)
    assert calls, "the sync was attempted"
    assert len(calls) == 1, "a failed fsync is never retried"
    assert len(harness.done) == acknowledged, "nothing of the failed cycle is acknowledged"
    assert isinstance(harness.fatal[0], OSError)
    monkeypatch.undo()
    harness.committer.stop()
    harness.log.close()


def _record(entry: int, lac: int, payload: bytes = b"p" * 100) -> bytes:
    buf = memoryview(bytearray(record_bytes(len(payload))))
    buf[RECORD_HEADER_BYTES : RECORD_HEADER_BYTES + len(payload)] = payload
    seal_record(buf, len(payload), ledger_id=5, entry_id=entry, epoch=1, lac=lac)
    return bytes(buf)


@pytest.mark.parametrize("beyond", ["adjacent", "after a hole"])
def test_the_torn_tail_probe_finds_a_confirming_record_past_preallocated_holes(tmp_path, beyond):
    """Recovery looks for a later valid record behind a bad one only in the ledger file's
    data extents (a fresh preallocated ledger is not read to its end); a record written past
    a hole, as a misdirected write could leave it, is still found."""
    from streamvault.dataplane.log.ledger import ScanEnd, scan_ledger

    path = tmp_path / "ledger-0000000000000005.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 64 * 1024 * 1024)
        os.pwrite(fd, _record(0, -1) + _record(1, 0), 0)
        os.pwrite(fd, b"\xff" * 64, 2 * BLOCK_BYTES)  # entry 2 damaged
        later = 3 * BLOCK_BYTES if beyond == "adjacent" else 40 * 1024 * 1024
        os.pwrite(fd, _record(3, 2), later)  # ...but entry 3 says 2 was acknowledged
        os.fsync(fd)
    finally:
        os.close(fd)
    result: list[ScanEnd] = []
    with pytest.raises(DataCorruption, match="confirms it durable"):
        list(scan_ledger(str(path), 5, closed_last_entry_id=None, result=result))
