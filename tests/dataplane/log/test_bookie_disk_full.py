"""A bookie's disk fills up (TESTING.md row 8), on a real 64 MiB ext4 on a loop device.

The full bookie fail-stops (exit 3) without acknowledging anything of the commit that hit
ENOSPC; the log goes on at the ack quorum on the other two; after the file system is grown
offline the bookie restarts, recovers its journal and serves again; a recovery then finds
every acknowledged record once, in order.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import loopfs
from support.bookies import BookieProcess
from support.replicated import Owner, recovered, replication

from streamvault.dataplane.log import LocalFileStore
from streamvault.dataplane.log.bookie import EXIT_IO_ERROR

pytestmark = pytest.mark.skipif(not loopfs.available(), reason="needs root and loop devices")

WRITES_MAX = 400


def test_a_full_disk_stops_one_bookie_and_the_log_goes_on(tmp_path: Path):
    fs = loopfs.LoopFS(tmp_path / "fs0", 64)
    bookies = [BookieProcess(fs.path)] + [BookieProcess(tmp_path / f"b{i}") for i in (1, 2)]
    try:
        for bookie in bookies:
            bookie.start()
        store = LocalFileStore(str(tmp_path / "coordination"))
        rep = replication([b.endpoint for b in bookies])
        owner = Owner.running(store, rep)
        records: list[bytes] = []
        full = bookies[0]
        for _ in range(WRITES_MAX):  # 16 MiB journal files: the 4th does not fit
            record = os.urandom(400_000)
            owner.write(record)
            records.append(record)
            if full.proc.poll() is not None:
                break
        assert full.proc.poll() == EXIT_IO_ERROR, f"bookie did not fail-stop:\n{full.logs()}"
        assert "No space left on device" in full.logs(), full.logs()
        full.proc = None
        for _ in range(10):  # the log goes on at Qa = 2
            record = os.urandom(400_000)
            owner.write(record)
            records.append(record)
        fs.grow(256)
        full.start()
        for _ in range(5):
            record = os.urandom(400_000)
            owner.write(record)
            records.append(record)
        owner.close()
        assert recovered(store, rep) == records
    finally:
        for bookie in bookies:
            bookie.kill()
        fs.close()


def test_a_disk_without_room_for_the_first_journal_file_stops_the_bookie_at_start(
    tmp_path: Path,
):
    """A 128 MiB journal file does not fit in 64 MiB: the bookie exits with the I/O error
    code before it serves, naming the cause (it used to die of the traceback, exit 1)."""
    fs = loopfs.LoopFS(tmp_path / "fs0", 64)
    bookie = BookieProcess(fs.path, args=("--journal-file-size", "128M"))
    try:
        with pytest.raises(AssertionError, match="bookie exited"):
            bookie.start()
        assert bookie.proc is not None and bookie.proc.returncode == EXIT_IO_ERROR
        assert "No space left on device" in bookie.logs(), bookie.logs()
    finally:
        bookie.kill()
        fs.close()
