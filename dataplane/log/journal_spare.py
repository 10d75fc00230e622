"""Spare journal files: the next journal file, zero-filled ahead of need (see journal.py).

A new journal file is written once with zeros before it holds records (`create_zeroed`):
commits into fallocate's unwritten extents would make every fdatasync also commit an
extent conversion. Done at rollover, that is `file_bytes` of writes in the commit path
(256 MiB: 0.15-0.4 s here), and the bookies of one ensemble, written at the same rate, roll
over at about the same moment, so their stalls line up and the quorum stalls with them
(measured: a 0.4 s gap in every bookie's commits at the first rollover, under RF=3 load).
`SpareMaker` makes that file on a background thread before it is needed (`threaded` False:
on the journal's thread right after a rollover, for the simulations' single thread):
`spare.tmp` is preallocated, zero-filled in 1 MiB pieces at most `pace` bytes/s (so it does
not take the disk from the commits), fsync'd, renamed to `spare.jnl`, and the directory
fsync'd. The journal takes it at rollover (`take`) when no recycled file is free, and asks
for the next one (`want`) whenever it has neither.

Invariants:
- `spare.jnl` is complete: zero-filled and fsync'd before its rename, the rename durable
  before `take` hands it out. `spare.tmp` is never used: `found` removes it (a crash or a
  close in the middle of making it).
- At most one spare exists or is being made. The thread touches only `spare.tmp` and its
  rename; the journal touches `spare.jnl` only after `take` returned it.
- An OSError of the thread is kept; `check` and `take` raise it, so the journal fails
  stop at its next commit, as for its own I/O errors. Nothing is retried.

It must never: hand out a file that is not completely zero-filled and durable, or let
the journal wait for a spare without lifting the rate limit.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time

from streamvault.dataplane.log.disk import Disk

SPARE_NAME = "spare.jnl"
SPARE_TMP_NAME = "spare.tmp"
ZERO_FILL_BYTES = 1024 * 1024
"""Write size when zero-filling a new journal file."""


def create_zeroed(
    disk: Disk,
    path: str,
    file_bytes: int,
    *,
    direct: bool,
    pace: float = 0.0,
    stopping: threading.Event | None = None,
    hurry: threading.Event | None = None,
) -> bool:
    """Preallocate `path` to `file_bytes`, write it once with zeros and fsync it; at most
    `pace` bytes/s (0: unpaced) until `hurry` is set. Returns False, leaving the file
    incomplete, if `stopping` is set first."""
    fd = disk.open_write(path, direct=False, create=True)
    try:
        disk.allocate(fd, file_bytes)
    finally:
        disk.close(fd)
    fd = disk.open_write(path, direct=direct)
    zeros = mmap.mmap(-1, ZERO_FILL_BYTES)  # page-aligned, as O_DIRECT requires
    view = memoryview(zeros)
    start = time.monotonic()
    try:
        for pos in range(0, file_bytes, ZERO_FILL_BYTES):
            if stopping is not None and stopping.is_set():
                return False
            if pace and not (hurry is not None and hurry.is_set()):
                ahead = start + pos / pace - time.monotonic()
                if ahead > 0:
                    if hurry is not None:
                        hurry.wait(ahead)  # set: go on unpaced
                    else:
                        time.sleep(ahead)
            size = min(ZERO_FILL_BYTES, file_bytes - pos)
            piece = view[:size]
            try:  # a traceback keeping the slice alive would make closing the buffer raise
                written = disk.pwrite(fd, piece, pos)  # BufferError in place of the I/O error
            finally:
                piece.release()
            if written != size:
                raise OSError(errno.EIO, f"short write zero-filling {path}")
        disk.fsync(fd)
        return True
    finally:
        view.release()
        zeros.close()
        disk.close(fd)


class SpareMaker:
    """Makes at most one spare journal file in `directory` on a background thread."""

    def __init__(
        self,
        disk: Disk,
        directory: str,
        file_bytes: int,
        *,
        direct: bool,
        pace: float,
        threaded: bool,
    ) -> None:
        self._disk = disk
        self._directory = directory
        self._file_bytes = file_bytes
        self._direct = direct
        self._pace = pace
        self._threaded = threaded
        self._path = os.path.join(directory, SPARE_NAME)
        self._tmp = os.path.join(directory, SPARE_TMP_NAME)
        self._lock = threading.Lock()
        self._ready = False
        self._thread: threading.Thread | None = None
        self._failed: OSError | None = None
        self._stopping = threading.Event()
        self._hurry = threading.Event()

    def found(self, names: list[str]) -> None:
        """On open: take over a complete spare, remove an incomplete one."""
        if SPARE_TMP_NAME in names:
            self._disk.unlink(self._tmp)
            self._disk.fsync_dir(self._directory)
        self._ready = SPARE_NAME in names

    def want(self) -> None:
        """Start making a spare unless one exists, is being made, or making one failed."""
        with self._lock:
            if self._ready or self._thread is not None or self._failed is not None:
                return
            if self._stopping.is_set():
                return
            if self._threaded:
                self._hurry.clear()  # a take() that waited for the last spare set it
                self._thread = threading.Thread(
                    target=self._make, args=(self._pace,), name="journal-spare", daemon=True
                )
                self._thread.start()
                return
        self._make(0.0)  # now, on the caller's thread, unpaced
        self.check()  # inline, the error is the caller's now

    def take(self) -> str | None:
        """The path of a complete spare, now the caller's to rename; waits (unpaced) for one
        being made; None if there is none."""
        thread = self._thread
        if thread is not None:
            self._hurry.set()
            thread.join()
        self.check()
        with self._lock:
            if not self._ready:
                return None
            self._ready = False
            return self._path

    def check(self) -> None:
        """Raise the thread's I/O error, if any (the journal is then fail-stop)."""
        if self._failed is not None:
            raise self._failed

    def _make(self, pace: float) -> None:
        try:
            done = create_zeroed(
                self._disk,
                self._tmp,
                self._file_bytes,
                direct=self._direct,
                pace=pace,
                stopping=self._stopping,
                hurry=self._hurry,
            )
            if done:
                self._disk.rename(self._tmp, self._path)
                self._disk.fsync_dir(self._directory)
        except OSError as exc:
            self._failed = exc
            done = False
        with self._lock:
            self._thread = None
            self._ready = done

    def close(self) -> None:
        """Stop making a spare (its `spare.tmp` is removed at the next open)."""
        self._stopping.set()
        self._hurry.set()
        thread = self._thread
        if thread is not None:
            thread.join()
