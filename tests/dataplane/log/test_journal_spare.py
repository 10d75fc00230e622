"""Spare journal files (journal_spare.py): made ahead of the rollover that needs them,
complete before use, an incomplete one never used, an I/O error of the thread fail-stop."""

from __future__ import annotations

import dataclasses
import errno
import time
from pathlib import Path

import pytest

from streamvault.client.protocol.errors import StorageError
from streamvault.dataplane.log import journal_spare
from streamvault.dataplane.log.journal import Journal, JournalConfig

CONFIG = JournalConfig(file_bytes=1024 * 1024, commit_bytes_max=64 * 1024, files_recycled_max=1)
DEADLINE_S = 20.0
"""Bound of every wait here (what is waited for takes well under a second)."""
SLOW = 64 * 1024
"""A pace (bytes/s) at which a spare would take many minutes: finishing within DEADLINE_S
shows that the pacing was lifted, not how fast anything is."""


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _fill(journal: Journal, ledger: int, entries: range, size: int = 30_000) -> None:
    for entry in entries:
        journal.add_entry(
            ledger, entry, epoch=1, lac=entry - 1, payload=bytes([entry % 251]) * size, token=entry
        )
    journal.commit()


def test_spare_is_made_ahead_and_used_at_rollover(tmp_path: Path):
    journal = Journal(str(tmp_path), CONFIG)
    try:
        _wait_for(lambda: (tmp_path / "spare.jnl").exists(), "the first spare")
        assert not (tmp_path / "spare.tmp").exists()
        assert (tmp_path / "spare.jnl").read_bytes() == bytes(CONFIG.file_bytes), "zero-filled"
        _fill(journal, 1, range(40))  # ~1.2 MiB: rolls over once, into the spare
        assert journal.counters["files_spare"] == 1 and journal.counters["files_created"] == 1
        assert len(journal.files()) == 2
        _wait_for(lambda: (tmp_path / "spare.jnl").exists(), "the next spare")
    finally:
        journal.close()
    journal = Journal(str(tmp_path), CONFIG)  # the spare is not a journal file
    try:
        assert len(journal.files()) == 2
        for entry in range(40):
            assert journal.read_entry(1, entry) == bytes([entry % 251]) * 30_000
    finally:
        journal.close()


def test_no_spare_while_a_recycled_file_is_free(tmp_path: Path):
    config = dataclasses.replace(CONFIG, spare_thread=False)  # inline: no waiting needed
    journal = Journal(str(tmp_path), config)
    try:
        assert (tmp_path / "spare.jnl").exists(), "an empty directory has no free file"
        _fill(journal, 1, range(40))  # into the spare; the next spare is made at once
        assert journal.counters["files_spare"] == 1 and (tmp_path / "spare.jnl").exists()
        journal.delete_ledger(1, token=None)
        _fill(journal, 2, range(40))  # into the spare (file 3), which frees file 1
        assert journal.counters["files_spare"] == 2 and (tmp_path / "spare.jnl").exists()
        assert list(tmp_path.glob("free-*.jnl")), "file 1 is kept for reuse"
        _fill(journal, 2, range(40, 80))  # rolls over into the recycled file, not the spare
        assert journal.counters["files_recycled"] == 1 and journal.counters["files_spare"] == 2
        assert journal.counters["files_created"] == 1 and (tmp_path / "spare.jnl").exists()
        assert not list(tmp_path.glob("free-*.jnl"))
    finally:
        journal.close()


def test_an_incomplete_spare_is_removed_never_used(tmp_path: Path):
    (tmp_path / "spare.tmp").write_bytes(b"\xff" * CONFIG.file_bytes)  # a crash mid-fill
    journal = Journal(str(tmp_path), dataclasses.replace(CONFIG, spare_thread=False))
    try:
        assert (tmp_path / "spare.jnl").read_bytes() == bytes(CONFIG.file_bytes)
        assert not (tmp_path / "spare.tmp").exists()
    finally:
        journal.close()


def test_close_stops_a_paced_spare_and_reopen_removes_it(tmp_path: Path):
    slow = dataclasses.replace(CONFIG, file_bytes=64 * 1024 * 1024, spare_fill_bytes_per_s=SLOW)
    journal = Journal(str(tmp_path), slow)  # paced, the spare would take 17 minutes
    _wait_for(lambda: (tmp_path / "spare.tmp").exists(), "the spare being made")
    started = time.monotonic()
    journal.close()
    assert time.monotonic() - started < DEADLINE_S, "close does not wait out the pacing"
    assert (tmp_path / "spare.tmp").exists() and not (tmp_path / "spare.jnl").exists()
    journal = Journal(str(tmp_path), dataclasses.replace(slow, spare_thread=False))
    try:
        assert not (tmp_path / "spare.tmp").exists() and (tmp_path / "spare.jnl").exists()
    finally:
        journal.close()


def test_a_rollover_waiting_for_the_spare_lifts_the_pacing(tmp_path: Path):
    slow = dataclasses.replace(CONFIG, file_bytes=32 * 1024 * 1024, spare_fill_bytes_per_s=SLOW)
    journal = Journal(str(tmp_path), slow)  # paced, the spare would take 8 minutes
    try:
        _wait_for(lambda: (tmp_path / "spare.tmp").exists(), "the spare being made")
        started = time.monotonic()
        _fill(journal, 1, range(1100))  # ~33 MiB: the rollover waits for the spare
        assert journal.counters["files_spare"] == 1 and journal.counters["files_created"] == 1
        assert time.monotonic() - started < DEADLINE_S, "the rollover lifted the pacing"
    finally:
        journal.close()


def test_io_error_of_the_spare_thread_is_fail_stop(tmp_path: Path, monkeypatch):
    def failing(*args, **kwargs):
        raise OSError(errno.ENOSPC, "no space left (injected)")

    monkeypatch.setattr(journal_spare, "create_zeroed", failing)  # the thread's, only
    journal = Journal(str(tmp_path), CONFIG)
    try:
        _wait_for(lambda: journal._spare._failed is not None, "the spare thread to fail")
        with pytest.raises(StorageError, match="no space left"):  # the next add, or commit
            journal.add_entry(1, 0, epoch=1, lac=-1, payload=b"x", token="t")
        with pytest.raises(StorageError, match="failed earlier"):
            journal.commit()
    finally:
        journal.close()
