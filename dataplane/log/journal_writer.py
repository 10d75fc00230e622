"""The bookie journal's commit writer: a commit's bytes are written in pieces while the rest
of it is still being packed, then made durable with one fdatasync (see journal.py).

`CommitWriter` owns a ring buffer (anonymous mmap: page-aligned, as O_DIRECT requires) cut
into slots of `piece_bytes`. The journal hands it one commit at a time: `begin` (the file and
the 4096-aligned position the commit goes to), `put` (bytes, copied into the ring in order)
and `end` (zero padding to 4096, then the commit's fdatasync). Each time a slot is full, its
piece is handed to the I/O side to be `pwrite`n at its file position while the caller packs
the next slot; `end` hands over the last piece and the fdatasync. The I/O side is one
dedicated thread (`threaded`; os.pwrite and os.fdatasync release the GIL, so packing and
disk transfer overlap) or, without it, the caller at the moment of hand-over. A commit that
fits one piece, handed over while the I/O side is idle, is written and synced by the caller
either way: a thread hand-off would only add latency to the fdatasync-bound small commits.

Invariants:
- Disk calls run one at a time, in hand-over order: a commit's pieces in file order, then its
  fdatasync, then the next commit's pieces. So the sequence of disk calls is the same with
  or without the thread (the simulation's replay depends on it), and a commit is written only
  after the previous commit's fdatasync returned.
- A slot is filled again only after every piece handed over from it was written; a piece is
  handed over only once all its bytes are final. Pieces are 4096-aligned in the ring and in
  the file and never cross a slot's end.
- The first exception of a disk call (crash points included) stops the I/O side for good:
  nothing handed over after it is executed, every later call raises it (fail-stop).
- `synced` counts the commits whose fdatasync returned, in order; nothing else is durable.

It must never: run a disk call of a commit before the previous commit's fdatasync returned,
write a slot's bytes while they are being replaced, or retry a failed call.
"""

from __future__ import annotations

import errno
import mmap
import threading
import time
from collections import deque
from typing import NamedTuple

from streamvault.client.protocol.crashpoints import crash_point, fault_point
from streamvault.client.protocol.latency import LatencyWindow
from streamvault.dataplane.log.disk import Disk
from streamvault.dataplane.log.framing import BLOCK_BYTES

_ZEROS = memoryview(bytes(BLOCK_BYTES))
"""Padding source: a commit is padded with fewer than 4096 zero bytes."""


class _Op(NamedTuple):
    sync: bool  # False: pwrite ring[start:stop] at file_pos; True: fdatasync
    fd: int
    start: int
    stop: int
    file_pos: int
    first: bool  # the first piece of its commit


class CommitWriter:
    """Packs commits into a ring of pieces and writes them in order (see module docstring)."""

    def __init__(self, disk: Disk, *, piece_bytes: int, ring_bytes: int, threaded: bool) -> None:
        assert piece_bytes > 0 and piece_bytes % BLOCK_BYTES == 0, piece_bytes
        assert ring_bytes >= 2 * piece_bytes and ring_bytes % piece_bytes == 0, ring_bytes
        self._disk = disk
        self._piece_bytes = piece_bytes
        self._threaded = threaded
        self._ring = mmap.mmap(-1, ring_bytes)
        self._view = memoryview(self._ring)
        self._slot_ops = [0] * (ring_bytes // piece_bytes)  # ops handed over up to a slot's last
        self.latency = {"write": LatencyWindow(), "sync": LatencyWindow()}
        """Durations of the disk calls: each piece's pwrite, each commit's fdatasync (one
        call at a time, by the invariant above, so one recorder at a time)."""
        # I/O side, shared with the thread under _cond
        self._cond = threading.Condition(threading.Lock())
        self._ops: deque[_Op] = deque()  # handed over, not yet executed (head: executing)
        self._handed = 0
        self._started = 0
        self._done = 0
        self._synced = 0
        self._failed: BaseException | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        # packing side (the caller's thread only)
        self._pos = 0  # ring position of the next byte
        self._slot_end = piece_bytes
        self._piece_start = 0  # ring position of the first byte not handed over
        self._fd = -1
        self._file_pos = 0  # file position of ring[_piece_start]
        self._pieces = 0  # pieces of the current commit handed over so far
        self._commit_bytes = 0  # bytes of the current commit handed over so far
        self._open = False

    @property
    def synced(self) -> int:
        """Commits whose fdatasync returned (since this writer was made)."""
        return self._synced

    # --- packing (the journal's thread) ------------------------------------------------
    def begin(self, fd: int, file_pos: int, first_bytes: int = 0) -> None:
        """Start a commit at `file_pos` (4096-aligned) of the file open for write as `fd`;
        `first_bytes`: the packed size of its first record, if known. A first record that
        fits one slot but not what is left of the current one starts the commit at the
        next slot, so a commit of one such record is one piece, written by the caller."""
        assert not self._open and file_pos % BLOCK_BYTES == 0, (self._open, file_pos)
        assert self._pos == self._piece_start and self._pos % BLOCK_BYTES == 0, self._pos
        self._check()
        first = -(-first_bytes // BLOCK_BYTES) * BLOCK_BYTES
        at_slot_start = self._pos == self._slot_end - self._piece_bytes
        if not at_slot_start and first <= self._piece_bytes and self._pos + first > self._slot_end:
            self._next_slot()
            self._piece_start = self._pos
        self._fd, self._file_pos, self._open = fd, file_pos, True
        self._pieces = self._commit_bytes = 0

    def put(self, data: bytes | memoryview) -> None:
        """Append `data` (bytes, or a 1-D memoryview of bytes) to the commit."""
        size = len(data)
        pos = self._pos
        if pos + size < self._slot_end:  # the common case: fits in the slot, not filling it
            self._view[pos : pos + size] = data
            self._pos = pos + size
            return
        view = memoryview(data)
        taken = 0
        while taken < size:
            chunk = min(self._slot_end - self._pos, size - taken)
            self._view[self._pos : self._pos + chunk] = view[taken : taken + chunk]
            self._pos += chunk
            taken += chunk
            if self._pos == self._slot_end:
                self._hand_piece()

    def end(self) -> tuple[int, int]:
        """Pad the commit to 4096 bytes and hand over its last piece and its fdatasync;
        return the commit's padded size and its pieces. It is durable once `synced` counts
        it."""
        assert self._open
        pad = -self._pos % BLOCK_BYTES
        if pad:
            self.put(_ZEROS[:pad])
        single = self._pieces == 0
        self._open = False
        if self._pos != self._piece_start:
            self._hand_piece()
        self._submit(_Op(True, self._fd, 0, 0, 0, False), inline=single)
        return self._commit_bytes, self._pieces

    def _hand_piece(self) -> None:
        start, stop = self._piece_start, self._pos
        first = self._pieces == 0
        self._pieces += 1
        self._commit_bytes += stop - start
        op = _Op(False, self._fd, start, stop, self._file_pos, first)
        # a commit is known to be a single piece only when `end` hands that piece over
        self._submit(op, inline=first and not self._open)
        self._slot_ops[start // self._piece_bytes] = self._handed
        self._file_pos += stop - start
        if stop == self._slot_end:
            self._next_slot()
        self._piece_start = self._pos

    def _next_slot(self) -> None:
        """On to the next slot, once its last piece is written."""
        nxt = self._slot_end % len(self._ring)
        self._slot_end = nxt + self._piece_bytes
        self._pos = nxt
        self._wait_done(self._slot_ops[nxt // self._piece_bytes])

    # --- hand-over -------------------------------------------------------------------
    def _submit(self, op: _Op, *, inline: bool) -> None:
        self._check()
        if not self._threaded:
            self._handed += 1
            self._run_inline(op)
            return
        with self._cond:
            ops = self._ops
            idle = not ops
            self._handed += 1
            if not (inline and idle):
                ops.append(op)
                self._cond.notify_all()
                if self._thread is None:
                    self._start()
                # Wait until the thread has taken `op`: the caller then packs the next piece
                # while `op` runs, and is blocked (holding no GIL) whenever the thread returns
                # from a disk call and needs the GIL to go on; without this, a thread woken
                # while the caller copies waits for the GIL up to the switch interval (5 ms).
                while self._started < self._handed and self._failed is None:
                    self._cond.wait()
                return
        self._run_inline(op)  # the I/O side is idle: nothing runs beside this call

    def _run_inline(self, op: _Op) -> None:
        self._started += 1
        try:
            self._execute(op)
        except BaseException as exc:
            self._failed = exc
            self.stop()  # the thread, if any, is idle: let it end (its exception holds the
            raise  # journal's frames, so the journal may never be collected to stop it)
        self._done += 1
        if op.sync:
            self._synced += 1

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="journal-io", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _wait_done(self, ops: int) -> None:
        """Wait until the first `ops` handed-over operations are executed."""
        if self._done >= ops:
            return
        with self._cond:
            while self._done < ops and self._failed is None:
                self._cond.wait()
        self._check()

    def wait_written(self) -> None:
        """Wait until everything handed over so far is executed (a commit may be open);
        raise the I/O side's failure."""
        self._wait_done(self._handed)

    def drain(self) -> None:
        """Wait until everything handed over is executed; raise the I/O side's failure."""
        assert not self._open
        self._wait_done(self._handed)

    # --- I/O side (the thread, or the caller inline) ------------------------------------
    def _serve(self) -> None:
        cond, ops = self._cond, self._ops
        op: _Op | None = None
        while True:
            with cond:  # one lock hold: the last op's completion and the next op's start
                if op is not None:
                    ops.popleft()
                    self._done += 1
                    if op.sync:
                        self._synced += 1
                while not ops:
                    if self._stopping:
                        cond.notify_all()
                        return
                    cond.notify_all()
                    cond.wait()
                op = ops[0]
                self._started += 1
                cond.notify_all()
            try:
                self._execute(op)
            except BaseException as exc:  # handed to the caller, which raises it
                with cond:
                    self._failed = exc
                    ops.clear()
                    cond.notify_all()
                return

    def _execute(self, op: _Op) -> None:
        disk = self._disk
        if op.sync:
            crash_point("journal_after_write_before_sync")
            fault_point("journal_fdatasync_eio")
            started = time.monotonic()
            disk.fdatasync(op.fd)
            self.latency["sync"].record(time.monotonic() - started)
            crash_point("journal_after_sync")
            return
        if op.first:
            crash_point("journal_before_write")
        size = op.stop - op.start
        piece = self._view[op.start : op.stop]
        try:  # release the slice even if the write fails (see journal_spare.create_zeroed)
            started = time.monotonic()
            written = disk.pwrite(op.fd, piece, op.file_pos)
            self.latency["write"].record(time.monotonic() - started)
        finally:
            piece.release()
        if written != size:
            raise OSError(errno.EIO, f"short write {written} of {size} at {op.file_pos}")

    # --- lifetime ----------------------------------------------------------------------
    def stop(self) -> None:
        """Let the thread end once it has nothing to do (also when the journal is dropped
        without `close`: a crashed simulation)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the thread (after what was handed over) and free the ring."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._view.release()
        self._ring.close()
