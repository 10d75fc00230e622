"""The bookie journal on real files: group commit, restart, torn tails, corruption, rollover,
recycling and the file removal rule, markers, large entries, fail-stop, crash points, and a
model-based property test."""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvault.client.protocol.errors import DataCorruption, StorageError
from streamvault.dataplane.log import journal as journal_module
from streamvault.dataplane.log.framing import BLOCK_BYTES
from streamvault.dataplane.log.journal import Journal, JournalConfig
from streamvault.dataplane.log.journal_format import (
    HEADER_BYTES,
    KIND_ENTRY,
    KIND_FENCE,
    JournalRecord,
    ScanEnd,
    pack_record,
    read_record,
    scan_file,
    torn_extent,
)
from streamvault.dataplane.log.probe import MODE_BUFFERED, MODE_DIRECT

MEDIUM = JournalConfig(file_bytes=8 * 1024 * 1024, commit_bytes_max=1024 * 1024)
SMALL = JournalConfig(
    file_bytes=64 * 1024, commit_bytes_max=16 * 1024, files_recycled_max=1, compact_quiet_s=0
)


def _inline_spare(config: JournalConfig) -> JournalConfig:
    """For tests that patch os functions: no spare thread making disk calls meanwhile (a
    spare is then made on the journal's thread, at open and after a rollover)."""
    return dataclasses.replace(config, spare_thread=False)


def _payload(ledger: int, entry: int, size: int = 200, salt: int = 0) -> bytes:
    unit = f"<{ledger}:{entry}:{salt}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


def _journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jnl"))


def _scan(path: Path, *, last: bool = True) -> tuple[list[JournalRecord], ScanEnd]:
    """The valid records of one journal file and where its valid data ends."""
    data = bytearray(path.read_bytes())
    result: list[ScanEnd] = []
    seq = int(path.name[8:24], 16)
    records = list(
        scan_file(
            memoryview(data), path=str(path), file_seq=seq, prev_commit_seq=None, last=last,
            result=result,
        )
    )  # fmt: skip
    return records, result[0]


def _patch(path: Path, pos: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(data)


def _flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x40]))


def _fill(journal: Journal, ledgers: list[int], entries: range, size: int = 200) -> None:
    for entry in entries:
        for ledger in ledgers:
            journal.add_entry(
                ledger, entry, epoch=1, lac=entry - 1, payload=_payload(ledger, entry, size),
                token=(ledger, entry),
            )  # fmt: skip


def _assert_entries(journal: Journal, ledgers: list[int], entries: range, size: int = 200) -> None:
    for ledger in ledgers:
        for entry in entries:
            assert journal.read_entry(ledger, entry) == _payload(ledger, entry, size)


def test_round_trip_many_ledgers_one_sync(tmp_path):
    journal = Journal(str(tmp_path))
    assert journal.durability_mode in (MODE_DIRECT, MODE_BUFFERED)
    _fill(journal, [1, 2, 3, 7], range(25))
    assert journal.pending() == 100
    assert journal.read_entry(1, 0) is None, "nothing is visible before it is durable"
    tokens = journal.commit()
    assert tokens == [(ledger, e) for e in range(25) for ledger in (1, 2, 3, 7)]
    assert journal.pending() == 0
    assert journal.counters["commits"] == 1 and journal.counters["syncs"] == 1
    assert journal.counters["records"] == 100 and journal.counters["trigger_queue_empty"] == 1
    _assert_entries(journal, [1, 2, 3, 7], range(25))
    assert journal.ledgers() == [1, 2, 3, 7]
    assert journal.last_entry_id(2) == 24 and journal.lac(2) == 23
    assert journal.last_entry_id(99) == -1 and journal.lac(99) == -1
    assert journal.read_entry(1, 25) is None and journal.read_entry(99, 0) is None
    assert journal.commit() == [] and journal.counters["syncs"] == 1
    journal.close()


def test_commit_is_cut_at_commit_bytes_max(tmp_path):
    journal = Journal(str(tmp_path), SMALL)
    _fill(journal, [1], range(200))  # ~54 KiB of records: four commits of <= 16 KiB
    assert len(journal.commit()) == 200
    assert journal.counters["syncs"] == journal.counters["commits"] == 4
    assert journal.counters["trigger_bytes_max"] == 3
    assert journal.counters["trigger_queue_empty"] == 1
    records, _ = _scan(_journal_files(tmp_path)[0])
    seqs = sorted({r.commit_seq for r in records})
    assert seqs == [1, 2, 3, 4]
    for seq in seqs:
        first = min(r.pos for r in records if r.commit_seq == seq)
        end = max(r.pos + HEADER_BYTES + r.payload_bytes for r in records if r.commit_seq == seq)
        assert first % BLOCK_BYTES == 0 and end - first <= SMALL.commit_bytes_max
    journal.close()


def test_restart_keeps_state_and_appends_after_the_last_commit(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    _fill(journal, [1, 2], range(10))
    journal.fence(2, epoch=4, token="f")
    journal.commit()
    journal.close()
    path = _journal_files(tmp_path)[0]
    _, first_end = _scan(path)
    first_bytes = path.read_bytes()[: first_end.end_pos]

    journal = Journal(str(tmp_path), MEDIUM)
    assert journal.ledgers() == [1, 2]
    _assert_entries(journal, [1, 2], range(10))
    assert journal.last_entry_id(1) == 9 and journal.lac(1) == 8
    assert journal.fenced_epoch(2) == 4 and journal.fenced_epoch(1) is None
    _fill(journal, [1, 3], range(10, 20))
    journal.commit()
    journal.close()

    assert path.read_bytes()[: first_end.end_pos] == first_bytes, "acknowledged blocks rewritten"
    records, _ = _scan(path)
    later = [r for r in records if r.pos >= first_end.end_pos]
    assert later and min(r.pos for r in later) == first_end.end_pos
    assert first_end.end_pos % BLOCK_BYTES == 0
    assert {r.commit_seq for r in later} == {first_end.last_commit_seq + 1}
    journal = Journal(str(tmp_path), MEDIUM)
    _assert_entries(journal, [1], range(20))
    _assert_entries(journal, [3], range(10, 20))
    assert journal.ledgers() == [1, 2, 3] and journal.fenced_epoch(2) == 4
    journal.close()


def _torn_commit(path: Path, pos: int, commit_seq: int, damage: str) -> None:
    """Write what a torn second commit could leave at `pos`."""
    seq = int(path.name[8:24], 16)
    buf = memoryview(bytearray(3 * BLOCK_BYTES))
    end = 0
    for entry in range(21):  # a commit whose end record never landed; entry 101 at a block
        payload = _payload(1, 100 + entry, 4096 - HEADER_BYTES if entry == 0 else 200)
        record = JournalRecord(KIND_ENTRY, 0, len(payload), seq, commit_seq, 1, 100 + entry, 1,
                               -1, 0)  # fmt: skip
        end = pack_record(buf, end, payload, record)
    if damage == "garbage":
        _patch(path, pos, os.urandom(5000))
    elif damage == "zeros":
        _patch(path, pos, bytes(BLOCK_BYTES))
    elif damage == "truncated":  # the first record's header only
        _patch(path, pos, bytes(buf[: HEADER_BYTES + 10]))
    elif damage == "no_end":  # whole records, but the commit's end record is missing
        _patch(path, pos, bytes(buf[:end]))
    elif damage in ("pieces", "later_commit"):  # the first block lost, later blocks landed
        _patch(path, pos + BLOCK_BYTES, bytes(buf[BLOCK_BYTES:end]))


@pytest.mark.parametrize("damage", ["garbage", "zeros", "truncated", "no_end", "pieces"])
def test_torn_tail_is_cut_idempotently_and_writing_continues(tmp_path, damage):
    journal = Journal(str(tmp_path), MEDIUM)
    _fill(journal, [1], range(10))
    journal.commit()
    journal.close()
    path = _journal_files(tmp_path)[0]
    _, end = _scan(path)
    _torn_commit(path, end.end_pos, end.last_commit_seq + 1, damage)
    assert _scan(path)[1].torn == (damage not in ("zeros", "pieces"))

    # a cut is counted where remains of this file's records were zeroed (random bytes hold
    # none: what a recycled file's old contents look like)
    cuts = 0 if damage in ("garbage", "zeros") else 1
    for _ in range(2):  # recovery is idempotent
        journal = Journal(str(tmp_path), MEDIUM)
        _assert_entries(journal, [1], range(10))
        assert journal.last_entry_id(1) == 9 and journal.read_entry(1, 100) is None
        assert journal.counters["tail_cuts"] == cuts
        journal.close()
        cuts = 0
    data = memoryview(bytearray(path.read_bytes()))
    assert torn_extent(data, end.end_pos, len(data), 1) == end.end_pos, "torn remains zeroed"

    journal = Journal(str(tmp_path), MEDIUM)
    _fill(journal, [1], range(10, 12))
    assert len(journal.commit()) == 2
    journal.close()
    journal = Journal(str(tmp_path), MEDIUM)
    _assert_entries(journal, [1], range(12))
    assert journal.last_entry_id(1) == 11
    journal.close()


def test_pieces_of_a_commit_after_the_torn_one_prove_corruption(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    _fill(journal, [1], range(10))
    journal.commit()
    journal.close()
    path = _journal_files(tmp_path)[0]
    _, end = _scan(path)
    _torn_commit(path, end.end_pos, end.last_commit_seq + 2, "later_commit")
    with pytest.raises(DataCorruption, match="written after it was durable"):
        Journal(str(tmp_path), MEDIUM)


def test_corruption_before_a_later_commit_of_the_last_file_stops_recovery(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    for batch in range(3):
        _fill(journal, [1, 2], range(batch * 10, batch * 10 + 10))
        journal.commit()
    journal.close()
    path = _journal_files(tmp_path)[0]
    records, _ = _scan(path)
    victim = next(r for r in records if r.commit_seq == 2)
    _flip(path, victim.pos + HEADER_BYTES + 3)
    with pytest.raises(DataCorruption, match=r"position \d+ after commit_seq 1") as info:
        Journal(str(tmp_path), MEDIUM)
    assert info.value.fields["later_commit_seq"] == 3
    assert str(path) in str(info.value)
    # the directory lock is released even though the open failed
    _flip(path, victim.pos + HEADER_BYTES + 3)
    Journal(str(tmp_path), MEDIUM).close()


def test_corruption_in_a_file_before_the_last_stops_recovery(tmp_path):
    journal = Journal(str(tmp_path), SMALL)
    for batch in range(12):
        _fill(journal, [1], range(batch * 20, batch * 20 + 20), size=600)
        journal.commit()
    journal.close()
    files = _journal_files(tmp_path)
    assert len(files) >= 3
    records, _ = _scan(files[0], last=False)
    _flip(files[0], records[0].pos + 5)  # the header of the file's first commit
    with pytest.raises(DataCorruption, match=str(files[0])):
        Journal(str(tmp_path), SMALL)


def test_missing_middle_file_is_corruption(tmp_path):
    journal = Journal(str(tmp_path), SMALL)
    _fill(journal, [1], range(300), size=600)
    journal.commit()
    journal.close()
    files = _journal_files(tmp_path)
    assert len(files) >= 3
    files[1].unlink()
    with pytest.raises(DataCorruption, match="not contiguous"):
        Journal(str(tmp_path), SMALL)


def test_bit_flip_is_detected_on_read(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    _fill(journal, [1], range(5))
    journal.commit()
    records, _ = _scan(_journal_files(tmp_path)[0])
    victim = next(r for r in records if r.entry_id == 3)
    _flip(_journal_files(tmp_path)[0], victim.pos + HEADER_BYTES + 17)
    with pytest.raises(DataCorruption, match="entry 3 of ledger 1"):
        journal.read_entry(1, 3)
    assert journal.read_entry(1, 2) == _payload(1, 2)
    journal.close()


def _ledgers_per_file(directory: Path) -> dict[int, set[int]]:
    out = {}
    for path in _journal_files(directory):
        records, _ = _scan(path, last=False)
        out[int(path.name[8:24], 16)] = {r.ledger_id for r in records if r.kind == KIND_ENTRY}
    return out


def _truncating_writer(journal: Journal, ledgers: range, *, compact: bool) -> list[int]:
    """Busy ledgers, each about a file's worth and then deleted (a container truncating
    behind its uploads); the files in use after each, with compaction steps run or not."""
    in_use = []
    for ledger in ledgers:
        _fill(journal, [ledger], range(70), size=900)
        journal.commit()
        journal.delete_ledger(ledger, token=("d", ledger))
        journal.commit()
        while compact and journal.compact_step():
            pass
        in_use.append(len(journal.files()))
    return in_use


def test_compaction_waits_until_the_ledgers_of_the_oldest_file_are_quiet(tmp_path):
    """A ledger added to within `compact_quiet_s` is one its container is about to delete:
    its file is not copied forward until the ledger has been quiet that long."""
    now = [0.0]
    config = dataclasses.replace(SMALL, compact_files_min=2, compact_quiet_s=30.0)
    journal = Journal(str(tmp_path), config, clock=lambda: now[0])
    try:
        journal.add_entry(1, 0, epoch=3, lac=-1, payload=_payload(1, 0), token="a")
        journal.commit()
        _truncating_writer(journal, range(2, 6), compact=False)
        assert len(journal.files()) > 2
        now[0] = 29.0
        assert journal.compact_step() == 0, "ledger 1's add was 29 s ago"
        assert journal.counters["compactions"] == 0
        now[0] = 30.0
        assert journal.compact_step() == 1
        assert journal.read_entry(1, 0) == _payload(1, 0)
    finally:
        journal.close()


def test_compaction_copies_an_idle_ledger_forward_so_the_old_files_go(tmp_path):
    """An idle ledger (two entries and a fence in the first file, then nothing) pins that
    file and, by the removal rule, every later one; compaction copies it forward instead."""
    config = dataclasses.replace(SMALL, compact_files_min=2)
    journal = Journal(str(tmp_path), config)
    journal.add_entry(1, 0, epoch=3, lac=-1, payload=_payload(1, 0), token="a")
    journal.add_entry(1, 1, epoch=3, lac=0, payload=_payload(1, 1), token="b")
    journal.fence(1, epoch=5, token="f")
    journal.commit()
    pinned = _truncating_writer(journal, range(2, 6), compact=False)
    assert pinned == sorted(pinned) and pinned[-1] >= 5, "without compaction nothing goes"
    in_use = _truncating_writer(journal, range(6, 16), compact=True)
    assert max(in_use[1:]) <= config.compact_files_min, in_use
    assert journal.counters["compactions"] >= 3
    assert journal.counters["records_relocated"] >= 9  # each time: 2 entries and a fence
    assert journal.counters["trigger_compaction"] == journal.counters["compactions"]

    def same(journal: Journal) -> None:
        assert journal.ledgers() == [1]
        _assert_entries(journal, [1], range(2))
        assert (journal.last_entry_id(1), journal.lac(1), journal.fenced_epoch(1)) == (1, 0, 5)
        assert journal.entry_ranges(1) == [(0, 1)]

    same(journal)
    files = journal.files()
    journal.close()
    journal = Journal(str(tmp_path), config)
    same(journal)
    assert journal.files() == files
    records = [r for p in _journal_files(tmp_path) for r in _scan(p, last=False)[0]]
    copies = [r for r in records if r.ledger_id == 1 and r.file_seq == files[0]]
    assert {(r.kind, r.entry_id, r.epoch) for r in copies} >= {
        (KIND_ENTRY, 0, 3), (KIND_ENTRY, 1, 3), (KIND_FENCE, 0, 5),
    }, "the copies keep ledger, entry and epoch"  # fmt: skip
    journal.close()


def test_compaction_leaves_a_file_whose_live_records_are_more_than_the_limit(tmp_path):
    """Live data beyond `compact_live_percent` is data still needed: not copied. Once a
    delete makes the file mostly dead, it is."""
    config = dataclasses.replace(SMALL, compact_files_min=1, compact_live_percent=25)
    journal = Journal(str(tmp_path), config)
    _fill(journal, [1], range(58), size=900)  # ~56 KB of the first 64 KiB file
    journal.commit()
    _fill(journal, [2], range(80), size=900)  # its first ~8 KB in the first file too
    journal.commit()
    files = journal.files()
    assert len(files) >= 2
    assert journal.compact_step() == 0 and journal.files() == files
    assert journal.counters["compactions"] == 0
    journal.delete_ledger(1, token="d")
    journal.commit()
    assert journal.files() == files, "ledger 2 still has entries in the first file"
    moved = journal.compact_step()
    assert 0 < moved < 12 and journal.counters["compactions"] == 1
    assert journal.files()[0] > files[0]
    _assert_entries(journal, [2], range(80), size=900)
    journal.close()


def test_compaction_moves_a_lively_oldest_file_that_pins_mostly_dead_ones(tmp_path):
    """A container that wrote most of a file into its open ledger and went idle: that file
    is too live to compact by itself, but the files behind it die as the other ledgers are
    truncated; once the journal as a whole is mostly dead the idle ledger is copied forward
    and the files go, instead of the journal growing while it stays idle."""
    config = dataclasses.replace(SMALL, compact_files_min=3, compact_live_percent=25)
    journal = Journal(str(tmp_path), config)
    _fill(journal, [1], range(50), size=900)  # ~48 KB of the first 64 KiB file: 75 % live
    journal.commit()
    in_use = _truncating_writer(journal, range(2, 30), compact=True)
    assert max(in_use) <= config.compact_files_min + 2, in_use
    assert journal.counters["compactions"] >= 1
    _assert_entries(journal, [1], range(50), size=900)
    files = journal.files()
    journal.close()
    journal = Journal(str(tmp_path), config)
    assert journal.files() == files
    _assert_entries(journal, [1], range(50), size=900)
    assert journal.last_entry_id(1) == 49
    journal.close()


def test_a_compaction_step_waits_for_staged_records_and_skips_what_changed(tmp_path):
    config = dataclasses.replace(SMALL, compact_files_min=1, compact_step_bytes=1000)
    journal = Journal(str(tmp_path), config)
    _fill(journal, [1], range(4), size=900)
    journal.commit()
    _fill(journal, [2], range(80), size=900)
    journal.delete_ledger(2, token="d")
    journal.commit()
    journal.add_entry(3, 0, epoch=1, lac=-1, payload=b"x", token="x")
    assert journal.compact_step() == 0, "nothing is copied while records are staged"
    journal.commit()
    assert journal.compact_step() == 2  # a step copies at most compact_step_bytes (~2)
    rewritten = _payload(1, 3, salt=7)
    journal.add_entry(1, 3, epoch=2, lac=2, payload=rewritten, token="r")  # in a newer file
    journal.commit()
    assert journal.compact_step() == 1  # entry 2; entry 3's copy there is not live
    assert journal.files()[0] > 1, "the first file went"
    assert journal.read_entry(1, 3) == rewritten
    _assert_entries(journal, [1], range(3), size=900)
    journal.close()


def test_a_removed_file_leaves_the_journal_at_once_and_is_shrunk_away_after(tmp_path):
    """Beyond the free pool a removed file is renamed out of the journal (trash-<seq>.jnl)
    and removed in steps on the remover's thread; one left by a crash goes at the next open."""
    journal = Journal(str(tmp_path), SMALL)
    try:
        _fill(journal, [1], range(300), size=900)  # ~270 KiB: several 64 KiB files
        journal.commit()
        held = journal.files()
        assert len(held) >= 4
        journal.delete_ledger(1, token="d1")
        journal.commit()
        assert journal.files() == held[-1:], "all but the current one removed"
        assert journal.counters["files_deleted"] == len(held) - 2  # one went to the free pool
        deadline = time.monotonic() + 20.0
        while not journal.removals_done():
            assert time.monotonic() < deadline, "removals not done"
            time.sleep(0.01)
        assert not list(tmp_path.glob("trash-*.jnl"))
        assert sorted(p.name for p in tmp_path.glob("journal-*.jnl")) == [
            f"journal-{held[-1]:016x}.jnl"
        ]
    finally:
        journal.close()
    (tmp_path / f"trash-{held[0]:016x}.jnl").write_bytes(b"\1" * 8192)  # cut short by a crash
    journal = Journal(str(tmp_path), SMALL)
    try:
        deadline = time.monotonic() + 20.0
        while list(tmp_path.glob("trash-*.jnl")):
            assert time.monotonic() < deadline, "trash not removed at open"
            time.sleep(0.01)
        assert journal.files() == held[-1:]
    finally:
        journal.close()


def test_rollover_recycle_and_removal_from_the_oldest_end(tmp_path):
    journal = Journal(str(tmp_path), SMALL)
    _fill(journal, [1, 2], range(0, 10), size=900)  # file 1: ledgers 1 and 2
    journal.commit()
    for batch in range(6):  # then mostly ledger 2, and ledger 3 later
        _fill(journal, [2], range(10 + batch * 20, 30 + batch * 20), size=900)
        journal.commit()
    _fill(journal, [3], range(40), size=900)
    journal.commit()
    before = _ledgers_per_file(tmp_path)
    made = journal.counters["files_created"] + journal.counters["files_spare"]
    assert len(before) >= 3 and made == len(before)

    journal.delete_ledger(2, token="d2")
    assert journal.commit() == ["d2"]
    assert journal.files() == sorted(before), "file 1 still holds live ledger 1: nothing goes"
    journal.close()
    journal = Journal(str(tmp_path), SMALL)
    assert journal.ledgers() == [1, 3], "a deleted ledger never comes back"
    assert journal.read_entry(2, 0) is None and journal.last_entry_id(2) == -1
    _assert_entries(journal, [1], range(10), size=900)

    journal.delete_ledger(1, token="d1")
    journal.commit()
    removed = [seq for seq in before if seq not in journal.files()]
    assert removed and removed == sorted(before)[: len(removed)], "from the oldest end only"
    assert all(before[seq] <= {1, 2} for seq in removed)
    first_kept = journal.files()[0]
    assert 3 in before.get(first_kept, {3}), "the oldest kept file holds a live ledger"
    assert journal.counters["files_freed"] == 1
    assert journal.counters["files_deleted"] == len(removed) - 1
    assert len(list(tmp_path.glob("free-*.jnl"))) == 1

    _fill(journal, [4], range(150), size=900)  # rolls over into the recycled file
    journal.commit()
    assert journal.counters["files_recycled"] == 1
    assert not list(tmp_path.glob("free-*.jnl"))
    journal.close()

    journal = Journal(str(tmp_path), SMALL)  # stale records of the recycled file are ignored
    assert journal.ledgers() == [3, 4]
    assert journal.counters["tail_cuts"] == 0, "old contents after the end are no torn tail"
    _assert_entries(journal, [3], range(40), size=900)
    _assert_entries(journal, [4], range(150), size=900)
    assert journal.read_entry(1, 0) is None and journal.read_entry(2, 10) is None
    seqs = [int(p.name[8:24], 16) for p in _journal_files(tmp_path)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) == journal.files()
    journal.delete_ledger(3, token="d3")
    journal.delete_ledger(4, token="d4")
    journal.commit()
    assert journal.files() == [seqs[-1]], "everything but the current file removed"
    journal.close()
    journal = Journal(str(tmp_path), SMALL)
    assert journal.ledgers() == [] and journal.read_entry(4, 149) is None
    journal.close()


def test_fence_and_delete_markers_are_durable(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    _fill(journal, [1, 2], range(3))
    journal.fence(1, epoch=3, token="f1")
    journal.fence(1, epoch=5, token="f2")
    journal.fence(9, epoch=2, token="f9")  # fencing a ledger with no entries creates it
    journal.delete_ledger(2, token="d2")
    with pytest.raises(ValueError, match="deleted"):
        journal.add_entry(2, 5, epoch=1, lac=4, payload=b"x", token=None)
    assert journal.commit()[-4:] == ["f1", "f2", "f9", "d2"]
    journal.close()
    journal = Journal(str(tmp_path), MEDIUM)
    assert journal.fenced_epoch(1) == 5 and journal.fenced_epoch(9) == 2
    assert journal.ledgers() == [1, 9] and journal.last_entry_id(9) == -1
    assert journal.read_entry(2, 0) is None and journal.fenced_epoch(2) is None
    with pytest.raises(ValueError, match="deleted"):
        journal.fence(2, epoch=9, token=None)
    journal.add_entry(1, 3, epoch=5, lac=2, payload=b"after fence", token="a")
    journal.commit()  # fencing is enforced above the journal, which only records it
    assert journal.read_entry(1, 3) == b"after fence"
    journal.close()


def test_rewritten_entry_keeps_the_latest_copy(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    journal.add_entry(1, 0, epoch=1, lac=-1, payload=b"first", token=1)
    journal.commit()
    journal.add_entry(1, 0, epoch=2, lac=-1, payload=b"second", token=2)
    journal.add_entry(1, 0, epoch=2, lac=-1, payload=b"third", token=3)
    journal.commit()
    assert journal.read_entry(1, 0) == b"third"
    journal.close()
    journal = Journal(str(tmp_path), MEDIUM)
    assert journal.read_entry(1, 0) == b"third" and journal.last_entry_id(1) == 0
    journal.close()


def test_large_entry_gets_a_commit_of_its_own(tmp_path):
    config = JournalConfig(file_bytes=256 * 1024, commit_bytes_max=16 * 1024)
    journal = Journal(str(tmp_path), config)
    big = os.urandom(100_000)
    journal.add_entry(1, 0, epoch=1, lac=-1, payload=b"small", token=0)
    journal.add_entry(1, 1, epoch=1, lac=0, payload=memoryview(big), token=1)
    journal.add_entry(1, 2, epoch=1, lac=1, payload=b"small", token=2)
    assert journal.commit() == [0, 1, 2]
    assert journal.counters["commits"] == journal.counters["syncs"] == 3
    assert journal.read_entry(1, 1) == big
    with pytest.raises(ValueError, match="payload"):
        journal.add_entry(1, 3, epoch=1, lac=2, payload=bytes(256 * 1024), token=3)
    journal.close()
    journal = Journal(str(tmp_path), config)
    assert journal.read_entry(1, 1) == big and journal.read_entry(1, 2) == b"small"
    journal.close()


PIECES = JournalConfig(
    file_bytes=8 * 1024 * 1024, commit_bytes_max=1024 * 1024, piece_bytes=64 * 1024
)


@pytest.mark.parametrize("io_thread", [True, False])
def test_commits_are_written_in_pieces_and_large_entries_stream_through_the_ring(
    tmp_path, io_thread
):
    """A commit of many pieces, and an entry larger than the writer's ring (4 pieces), read
    back byte-identical, also after a reopen; one fdatasync per commit."""
    config = dataclasses.replace(PIECES, io_thread=io_thread)
    journal = Journal(str(tmp_path), config)
    _fill(journal, [1, 2], range(20), size=20_000)  # ~800 KB: one commit, 13 pieces
    big = os.urandom(600_000)
    journal.add_entry(3, 0, epoch=1, lac=-1, payload=big, token="big")
    tokens = journal.commit()
    assert len(tokens) == 41 and tokens[-1] == "big"
    assert journal.counters["commits"] == journal.counters["syncs"] == 2
    assert journal.counters["pieces"] >= 13 + 10, journal.counters
    _assert_entries(journal, [1, 2], range(20), size=20_000)
    assert journal.read_entry(3, 0) == big
    journal.close()
    journal = Journal(str(tmp_path), config)
    _assert_entries(journal, [1, 2], range(20), size=20_000)
    assert journal.read_entry(3, 0) == big
    journal.close()


@pytest.mark.parametrize("io_thread", [True, False])
def test_a_commit_of_one_record_that_fits_a_piece_is_written_as_one_piece(tmp_path, io_thread):
    """Commits of one ~40 KB entry each (64 KiB pieces): every second one would cross a
    slot's end and take two pwrites (the I/O thread's hand-offs); each starts at the next
    slot instead and is one pwrite. Read back byte-identical after a reopen."""
    config = dataclasses.replace(PIECES, io_thread=io_thread)
    journal = Journal(str(tmp_path), config)
    for entry in range(12):
        _fill(journal, [1], range(entry, entry + 1), size=40_000)
        assert journal.commit() == [(1, entry)]
    assert journal.counters["commits"] == journal.counters["pieces"] == 12, journal.counters
    _fill(journal, [2], range(3), size=30_000)  # one commit of three: more than a piece
    journal.commit()
    assert journal.counters["pieces"] == 12 + 2, journal.counters
    journal.close()
    journal = Journal(str(tmp_path), config)
    _assert_entries(journal, [1], range(12), size=40_000)
    _assert_entries(journal, [2], range(3), size=30_000)
    journal.close()


@pytest.mark.parametrize("failing", ["pwrite", "fdatasync"])
def test_io_error_on_the_io_thread_is_fail_stop(tmp_path, monkeypatch, failing):
    """A piece's pwrite (or the sync) failing on the I/O thread: the next add or commit
    raises StorageError, no later piece or sync is issued, nothing of the commit is
    acknowledged or indexed."""
    journal = Journal(str(tmp_path), _inline_spare(PIECES))
    _fill(journal, [1], range(5))
    durable = journal.commit()
    calls: list[str] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: memoryview, pos: int) -> int:
        calls.append("pwrite")
        if failing == "pwrite" and calls.count("pwrite") == 3:
            raise OSError(errno.EIO, "injected")
        return real_pwrite(fd, data, pos)

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        if failing == "fdatasync":
            raise OSError(errno.EIO, "injected")
        real_fdatasync(fd)

    with monkeypatch.context() as patched:
        patched.setattr(journal_module.os, "pwrite", pwrite)
        patched.setattr(journal_module.os, "fdatasync", fdatasync)
        with pytest.raises(StorageError, match="injected"):  # pieces are written as added
            _fill(journal, [1], range(5, 95), size=20_000)  # two commits of many pieces
            journal.commit()
        failed_at = len(calls)
        with pytest.raises(StorageError, match="refusing"):
            journal.commit()
    if failing == "pwrite":
        assert calls == ["pwrite"] * 3, calls
    else:
        assert calls[-1] == "fdatasync" and calls.count("fdatasync") == 1, calls
    assert len(calls) == failed_at
    assert journal.read_entry(1, 5) is None and journal.last_entry_id(1) == 4
    journal.close()
    journal = Journal(str(tmp_path), PIECES)
    for _, entry in durable:
        assert journal.read_entry(1, entry) == _payload(1, entry)
    journal.close()


def test_io_error_is_fail_stop(tmp_path, monkeypatch):
    journal = Journal(str(tmp_path), _inline_spare(MEDIUM))
    _fill(journal, [1], range(5))
    durable = journal.commit()
    _fill(journal, [1], range(5, 10))

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    with monkeypatch.context() as patched:
        patched.setattr(journal_module.os, "fdatasync", failing_fdatasync)
        with pytest.raises(StorageError, match="injected"):
            journal.commit()
        with pytest.raises(StorageError, match="refusing"):
            journal.add_entry(1, 10, epoch=1, lac=9, payload=b"x", token=None)
        with pytest.raises(StorageError, match="refusing"):
            journal.commit()
        with pytest.raises(StorageError):
            journal.fence(1, epoch=2, token=None)
    journal.close()
    journal = Journal(str(tmp_path), MEDIUM)
    for _, entry in durable:
        assert journal.read_entry(1, entry) == _payload(1, entry)
    assert journal.last_entry_id(1) in (4, 9)  # the failed commit is all or nothing
    journal.close()


_CHILD = textwrap.dedent(
    """
    import sys
    from streamvault.dataplane.log.journal import Journal
    journal = Journal(sys.argv[1])
    journal.add_entry(1, 0, epoch=1, lac=-1, payload=b"first", token=0)
    journal.commit()
    journal.add_entry(1, 1, epoch=1, lac=0, payload=b"second", token=1)
    journal.commit()
    print("survived")
    """
)


@pytest.mark.parametrize(
    "point", ["journal_before_write", "journal_after_write_before_sync", "journal_after_sync"]
)
def test_crash_points_kill_the_process_at_the_named_moment(tmp_path, point):
    marker = tmp_path / "marker"
    env = dict(os.environ, STREAMVAULT_CRASH_POINT=f"{point}:{marker}")
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "j")], env=env, capture_output=True
    )
    assert child.returncode == -9 and b"survived" not in child.stdout, child.stderr
    journal = Journal(str(tmp_path / "j"))
    expected = {  # the point fires at the first commit; the page cache may keep the write
        "journal_before_write": [None],
        "journal_after_write_before_sync": [None, b"first"],
        "journal_after_sync": [b"first"],
    }
    assert journal.read_entry(1, 0) in expected[point]
    assert journal.read_entry(1, 1) is None
    assert marker.exists()
    journal.close()


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("file_bytes", {"file_bytes": 5000}),
        ("file_bytes", {"file_bytes": 0}),
        ("commit_bytes_max", {"commit_bytes_max": 4097}),
        ("commit_bytes_max", {"file_bytes": 8192, "commit_bytes_max": 16384}),
        ("commit_wait_us_max", {"commit_wait_us_max": -1}),
        ("files_recycled_max", {"files_recycled_max": -2}),
        ("files_recycled_max", {"files_recycled_max": True}),
        ("compact_quiet_s", {"compact_quiet_s": -1.0}),
        ("compact_quiet_s", {"compact_quiet_s": float("nan")}),
        ("direct", {"direct": "yes"}),
        ("piece_bytes", {"piece_bytes": 1000}),
        ("io_thread", {"io_thread": 1}),
        ("spare_thread", {"spare_thread": None}),
        ("spare_fill_bytes_per_s", {"spare_fill_bytes_per_s": -1}),
    ],
)
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        JournalConfig(**kwargs)


def test_directory_is_owned_by_one_journal(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    with pytest.raises(StorageError, match="another"):
        Journal(str(tmp_path), MEDIUM)
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        journal.commit()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 3), st.integers(0, 1 << 40), st.integers(-1, 99))
def test_record_round_trip_and_any_bit_flip_is_detected(payload, kind, ledger, lac):
    payload = payload if kind == KIND_ENTRY else b""
    record = JournalRecord(kind, 1, len(payload), 7, 9, ledger, 3, 2, lac, 0)
    buf = memoryview(bytearray(8192))
    end = pack_record(buf, 0, payload, record)
    assert end % 8 == 0 and end == (HEADER_BYTES + len(payload) + 7) // 8 * 8
    assert read_record(buf, 0, 7) == record
    assert read_record(buf, 0, 8) is None, "a record of another file_seq is not this file's"
    data = bytearray(buf[:end])
    data[(ledger + len(payload)) % (HEADER_BYTES + len(payload))] ^= 0x08
    assert read_record(data, 0, 7) is None


# --- model-based property test -------------------------------------------------------------
LEDGERS = st.integers(0, 2)
ADD = st.tuples(st.just("add"), LEDGERS, st.integers(0, 6), st.integers(0, 9000))
OPS = st.one_of(
    *(ADD, ADD, ADD, ADD),  # weight: enough entries to roll over, recycle and remove files
    st.tuples(st.just("fence"), LEDGERS, st.integers(0, 5)),
    st.tuples(st.just("delete"), LEDGERS),
    st.tuples(st.just("commit")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("torn"), st.binary(min_size=1, max_size=6000)),
)
MODEL_CONFIG = JournalConfig(
    file_bytes=32 * 1024, commit_bytes_max=8 * 1024, files_recycled_max=1, compact_quiet_s=0
)


class _Model:
    def __init__(self) -> None:
        self.entries: dict[int, dict[int, bytes]] = {}
        self.lac: dict[int, int] = {}
        self.fenced: dict[int, int] = {}
        self.dead: set[int] = set()  # deleted or delete queued: the test writes no more to it

    def apply(self, op: tuple) -> None:
        if op[0] == "add":
            _, ledger, entry, payload = op
            self.entries.setdefault(ledger, {})[entry] = payload
            self.lac[ledger] = max(self.lac.get(ledger, -1), entry - 1)
        elif op[0] == "fence":
            self.entries.setdefault(op[1], {})
            self.fenced[op[1]] = max(self.fenced.get(op[1], 0), op[2])
        else:
            self.entries.pop(op[1], None)
            self.lac.pop(op[1], None)
            self.fenced.pop(op[1], None)

    def check(self, journal: Journal) -> None:
        assert journal.ledgers() == sorted(self.entries)
        for ledger in range(5):
            entries = self.entries.get(ledger, {})
            assert journal.last_entry_id(ledger) == max(entries, default=-1)
            assert journal.lac(ledger) == self.lac.get(ledger, -1)
            assert journal.fenced_epoch(ledger) == self.fenced.get(ledger)
            for entry in range(8):
                assert journal.read_entry(ledger, entry) == entries.get(entry)


def _survivor(model: _Model, queued: list[tuple], journal: Journal) -> _Model:
    """The model after a reopen: records staged but never committed may survive only as a
    prefix (those of commits that a later record cut, whose fdatasync ran), never one
    without the records before it."""
    for k in range(len(queued) + 1):
        candidate = copy.deepcopy(model)
        for item in queued[:k]:
            candidate.apply(item)
        try:
            candidate.check(journal)
        except AssertionError:
            continue
        return candidate
    model.check(journal)  # fails with the difference to the committed state
    raise AssertionError("no prefix of the uncommitted records matches")


@settings(max_examples=50, deadline=None)
@given(st.lists(OPS, min_size=5, max_size=60))
def test_durable_state_matches_a_model_across_reopens_and_torn_tails(tmp_path_factory, ops):
    directory = tmp_path_factory.mktemp("model")
    journal = Journal(str(directory), MODEL_CONFIG)
    model, queued = _Model(), []
    try:
        for n, op in enumerate(ops):
            if op[0] == "add" and op[1] not in model.dead:
                payload = _payload(op[1], op[2], op[3], salt=n)
                journal.add_entry(op[1], op[2], epoch=1, lac=op[2] - 1, payload=payload, token=n)
                queued.append(("add", op[1], op[2], payload))
            elif op[0] == "fence" and op[1] not in model.dead:
                journal.fence(op[1], epoch=op[2], token=n)
                queued.append(op)
            elif op[0] == "delete" and op[1] not in model.dead:
                journal.delete_ledger(op[1], token=n)
                model.dead.add(op[1])
                queued.append(op)
            elif op[0] == "commit":
                assert len(journal.commit()) == len(queued)
                for item in queued:
                    model.apply(item)
                queued = []
                model.check(journal)
            elif op[0] in ("reopen", "torn"):
                journal.close()
                if op[0] == "torn":
                    path = _journal_files(directory)[-1]
                    _, end = _scan(path)
                    _patch(path, end.end_pos, op[1][: MODEL_CONFIG.file_bytes - end.end_pos])
                journal = Journal(str(directory), MODEL_CONFIG)
                model = _survivor(model, queued, journal)
                queued = []
                model.dead = {d for d in model.dead if d not in model.entries}
    finally:
        journal.close()


# --- regressions found by the deterministic simulation (test_journal_sim.py) ---------------
def test_damaged_last_commit_of_an_earlier_file_is_corruption_not_a_cut(tmp_path):
    """Commit seqs run on across files: if the final commit of a file that was rolled over
    from is damaged, the next file's first commit proves it was durable (it used to be cut
    silently, losing acknowledged entries)."""
    journal = Journal(str(tmp_path), SMALL)
    entry = 0
    while len(_journal_files(tmp_path)) < 2:
        _fill(journal, [1], range(entry, entry + 5), size=600)
        journal.commit()
        entry += 5
    journal.close()
    first = _journal_files(tmp_path)[0]
    records, _ = _scan(first, last=False)
    tail = max(r.commit_seq for r in records)
    victim = min((r for r in records if r.commit_seq == tail), key=lambda r: r.pos)
    _flip(first, victim.pos + HEADER_BYTES + 1)
    with pytest.raises(DataCorruption, match="written after it was durable"):
        Journal(str(tmp_path), SMALL)


def test_commit_found_in_place_of_its_predecessor_is_corruption(tmp_path):
    """A misdirected write of commit 3 over commit 2 (both one block) must not be taken for
    the commit after 1: that would drop commit 2 silently."""
    journal = Journal(str(tmp_path), MEDIUM)
    for entry in range(3):
        _fill(journal, [1], range(entry, entry + 1))
        journal.commit()
    journal.close()
    path = _journal_files(tmp_path)[0]
    data = path.read_bytes()
    _patch(path, BLOCK_BYTES, data[2 * BLOCK_BYTES : 3 * BLOCK_BYTES])
    _patch(path, 2 * BLOCK_BYTES, bytes(BLOCK_BYTES))
    with pytest.raises(DataCorruption, match="after commit_seq 1"):
        Journal(str(tmp_path), MEDIUM)


@pytest.mark.parametrize("case", ["small", "large", "zero_fill"])
def test_failed_pwrite_is_fail_stop_and_close_works(tmp_path, monkeypatch, case):
    """A pwrite error raised through the Disk used to leave a slice of the write buffer
    alive in the traceback, so closing the buffer raised BufferError in place of the error:
    no fail-stop (zero-fill of a new file, large entries) or a failing `close`."""
    journal = Journal(str(tmp_path), _inline_spare(SMALL))
    if case == "zero_fill":  # the next commit rolls over into the spare, then zero-fills the next
        journal.add_entry(1, 0, epoch=1, lac=-1, payload=bytes(60_000), token=0)
        journal.commit()
    size = {"small": 100, "large": 40_000, "zero_fill": 60_000}[case]
    journal.add_entry(1, 1, epoch=1, lac=0, payload=bytes(size), token=1)

    def failing_pwrite(fd: int, data: memoryview, pos: int) -> int:
        raise OSError(errno.ENOSPC, "injected")

    with monkeypatch.context() as patched:
        patched.setattr(journal_module.os, "pwrite", failing_pwrite)
        with pytest.raises(StorageError, match="injected"):
            journal.commit()
    with pytest.raises(StorageError, match="refusing"):
        journal.commit()
    journal.close()


def test_entry_ranges_list_the_committed_entries_of_a_ledger_as_runs(tmp_path):
    journal = Journal(str(tmp_path), MEDIUM)
    for entry in (0, 1, 2, 5, 7, 8):
        _fill(journal, [1], range(entry, entry + 1))
    _fill(journal, [2], range(3))
    assert journal.entry_ranges(1) == []  # staged, not committed
    journal.commit()
    _fill(journal, [1], range(9, 12))  # staged again: not listed until committed
    assert journal.entry_ranges(1) == [(0, 2), (5, 5), (7, 8)]
    assert journal.entry_ranges(2) == [(0, 2)] and journal.entry_ranges(3) == []
    journal.commit()
    journal.close()
    journal = Journal(str(tmp_path), MEDIUM)  # rebuilt from the files alike
    assert journal.entry_ranges(1) == [(0, 2), (5, 5), (7, 11)]
    journal.close()
