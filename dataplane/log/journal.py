"""The bookie journal: one shared, group-committed journal per data directory.

A bookie stores the ledger entries of many containers' logs in one journal, so that one
fdatasync makes every ledger's entries of a cycle durable. `Journal` owns the journal files
`journal-<file_seq:016x>.jnl` (preallocated with posix_fallocate and zero-filled, fsync'd
and the directory fsync'd at creation), the pool of free files `free-<old seq>.jnl` kept for
reuse, the spare `spare.jnl` zero-filled ahead of need when no free file is at hand
(journal_spare.py), and the in-memory index rebuilt from them on open. Record format and
scanner: journal_format.py.

Write side (one caller thread): `add_entry` / `fence` / `delete_ledger` stage records
into the current commit, which the `CommitWriter` (journal_writer.py) writes while more are
staged: each record is copied into a reused page-aligned ring buffer as soon as the next one
is staged (the newest is held back: its header says whether it ends its commit), and each
full piece of at most `piece_bytes` is written at once (`pwrite` at a 4096-aligned position,
O_DIRECT where the file system allows), so a bookie's disk works while it still drains its
socket. A record that would take a commit past `commit_bytes_max` (or past the end of the
file) ends it: its fdatasync is handed over then, and the next commit is packed meanwhile
(an entry larger than `commit_bytes_max` gets a commit of its own). `commit` ends the
current commit and waits until every commit is durable. Writes and syncs run on the
writer's I/O thread (`io_thread`), or inline, in the same order either way. Records become
visible in the index, and their tokens are returned, only in `commit`, after their
fdatasync returned; a record staged but not yet returned may survive a crash, but only
with every record staged before it.
Durability comes from fdatasync, never from O_DIRECT alone. Every file operation goes
through a `Disk` (disk.py): the real file system by default, a simulated faulty one in
tests.

Invariants:
- A commit starts on a fresh 4096-byte block, so a block holding acknowledged data is never
  rewritten; a commit (any of its pieces) is written only after the previous commit's
  fdatasync returned, and the next commit may only be packed meanwhile.
- The write fd is closed, and files renamed or removed, only while nothing is in flight.
- Recovery cuts a torn tail of the last file (and zeroes its remains before writing again)
  but stops with DataCorruption if later durable data proves the damaged data was durable.
- File removal rule: a file is removed (renamed into the free pool, or out of the journal
  as `trash-<seq>.jnl`, which the remover then shrinks away in steps) only if it
  is not the current file, every ledger it holds is deleted by a durable delete marker or
  has durable copies of its entries and fence marker in it in later files, and every older
  file has been removed: files go strictly from the oldest end, so a delete marker outlives
  every entry it deletes, and file seqs on disk are contiguous (a gap is DataCorruption).
- Compaction (`compact_step`): once more than `compact_files_min` files are in use, every
  live ledger in the oldest one has had no add for `compact_quiet_s`, and its live records
  (of ledgers not deleted) are at most `compact_live_percent` of a file, or the live
  entries of all files but the current one are at most that share of their size (an idle
  ledger with much data pinning dead files), they are copied forward
  into the current file: the same ledger, entry, epoch and payload (CRC verified on the
  way), the ledger's lac, and one fence marker at the ledger's fence epoch. A copy changes
  nothing a reader sees; once the copies are durable the old file goes. Without it one
  idle ledger (a container that wrote a record, or 100 MiB, and then nothing) would pin
  the oldest file, and by the rule above every later one, for ever.
- The index holds one small tuple per entry and no payloads; reads re-verify the CRC.

It must never: retry a failed fsync (any OSError, on the I/O thread too, is fail-stop: the
journal then refuses everything with StorageError and writes nothing more), acknowledge a
token or index a record before its commit's fdatasync returned, or take records of a
recycled file's previous life (older file_seq) for current ones.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from streamvault.client.protocol.errors import DataCorruption, StorageError
from streamvault.client.protocol.latency import LatencyWindow
from streamvault.dataplane.log.disk import Disk, OsDisk
from streamvault.dataplane.log.file_removal import FileRemover
from streamvault.dataplane.log.framing import BLOCK_BYTES, RECORD_PAYLOAD_BYTES_MAX, align_up
from streamvault.dataplane.log.journal_format import (
    FLAG_COMMIT_END,
    HEADER_BYTES,
    KIND_DELETE,
    KIND_ENTRY,
    KIND_FENCE,
    JournalRecord,
    ScanEnd,
    journal_file_name,
    packed_bytes,
    parse_file_name,
    read_record,
    scan_file,
    seal_header,
    torn_extent,
)
from streamvault.dataplane.log.journal_spare import SpareMaker, create_zeroed
from streamvault.dataplane.log.journal_writer import CommitWriter
from streamvault.dataplane.log.probe import MODE_DIRECT

log = logging.getLogger(__name__)

_U64_MAX = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
_TORN_EXTENT_BYTES = align_up(HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX)
_PADDING = bytes(8)
RING_PIECES = 4
"""Pieces the commit writer's ring buffer holds."""
_COUNTERS = (
    *("commits", "syncs", "pieces", "records", "bytes", "tail_cuts"),
    *("files_created", "files_spare", "files_recycled", "files_freed", "files_deleted"),
    *("trigger_queue_empty", "trigger_bytes_max", "trigger_file_end"),
    *("trigger_compaction", "compactions", "records_relocated", "bytes_relocated"),
)
TRASH_PREFIX = "trash-"
"""A removed file being shrunk away (`trash-<seq>.jnl`, file_removal.py); removed at open."""
_RELOCATED = object()
"""The token of a record that compaction copied forward (never returned by `commit`)."""


@dataclass(frozen=True, slots=True)
class JournalConfig:
    file_bytes: int = 256 * 1024 * 1024
    """Size each journal file is preallocated to; a multiple of 4096."""
    commit_bytes_max: int = 16 * 1024 * 1024
    """Record bytes one commit (one fdatasync) holds at most; a multiple of 4096. Large, since
    a bookie answers a turn only once all of it is durable: more commits per turn only add
    fdatasyncs (measured here: a sync per 4 MiB costs about a quarter of the bandwidth, per
    16 MiB about a tenth); the ring buffer does not grow with it."""
    piece_bytes: int = 1024 * 1024
    """Bytes one pwrite of a commit writes at most; a multiple of 4096. A larger commit is
    written in pieces, each while the next is packed (journal_writer.py)."""
    io_thread: bool = True
    """Write the pieces and sync on a dedicated thread, so packing overlaps them; False: the
    same disk calls in the same order on the caller's thread (the simulation runs both)."""
    commit_wait_us_max: int = 0
    """How long the caller's loop may wait for more records after the first (0: none)."""
    files_recycled_max: int = 6
    """Fully-deleted files kept for reuse instead of removed. Files are freed in bursts
    (a truncation or a compaction frees several at once) and every rollover that finds none
    zero-fills a new one (a whole file of writes, on every bookie of an ensemble at once):
    with 2, 60 MB/s into one stream for 90 s after 100 MB into another (RF=3, 256 MiB
    files) zero-filled 11 files per bookie (55 % of the bytes written) and removed 8; with
    6, 4 (the journal's growth to its working size) and none (perf/bench_idle_container.py).
    At most this many x `file_bytes` of disk stay allocated beyond the files in use."""
    direct: bool = True
    """Use O_DIRECT where the file system allows (see `Journal.durability_mode`)."""
    spare_thread: bool = True
    """Make the next journal file (zero-filled) on a background thread before it is needed,
    whenever no recycled file is free (journal_spare.py), and, on the real file system,
    remove files on another in steps (file_removal.py); False: make it on the journal's
    thread right after the rollover that used the last one, and unlink files there (the
    simulations: their disk calls stay on one thread, in a replayable order)."""
    spare_fill_bytes_per_s: int = 256 * 1024 * 1024
    """How fast the spare is zero-filled (0: unpaced); unpaced once a rollover waits for it."""
    compact_files_min: int = 4
    """Files in use (the current one included) beyond which the oldest is compacted."""
    compact_live_percent: int = 25
    """The oldest file is compacted only if its live records take at most this share of a
    file, or the live entries of all files but the current one take at most this share of
    them (more live data is data the containers still need: copying it would only churn);
    0: never compact."""
    compact_step_bytes: int = 4 * 1024 * 1024
    """Payload bytes one `compact_step` copies at most (one commit, one fdatasync)."""
    compact_quiet_s: float = 30.0
    """The oldest file is compacted only once every live ledger in it has had no add for
    this long (0: at once). A ledger still written, or paused for a while, is deleted by
    its container soon (an idle container's tails go to LTS and its ledgers go ~10 s after
    its last write, container.IDLE_S): copying it forward only doubled writes. Without it,
    8 streams writing 15 s and pausing 15 s in turn at 100 MB/s in all (RF=3,
    perf/bench_soak.py) had compaction copy 15.8 % of the bytes written, 4 MiB steps
    between a bookie's turns on all three bookies at once, 10 s windows' p95 10-65 ms."""

    def __post_init__(self) -> None:
        for name in (
            *("file_bytes", "commit_bytes_max", "piece_bytes"),
            *("commit_wait_us_max", "files_recycled_max", "spare_fill_bytes_per_s"),
            *("compact_files_min", "compact_live_percent", "compact_step_bytes"),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"JournalConfig.{name}={value!r} must be an int >= 0")
        for name in ("file_bytes", "commit_bytes_max", "piece_bytes"):
            value = getattr(self, name)
            if value < BLOCK_BYTES or value % BLOCK_BYTES:
                raise ValueError(
                    f"JournalConfig.{name}={value} must be a positive multiple of 4096"
                )
        quiet = self.compact_quiet_s
        if isinstance(quiet, bool) or not isinstance(quiet, int | float) or not quiet >= 0:
            raise ValueError(f"JournalConfig.compact_quiet_s={self.compact_quiet_s!r} must be >= 0")
        if self.compact_live_percent > 100:
            raise ValueError(
                f"JournalConfig.compact_live_percent={self.compact_live_percent} must be <= 100"
            )
        if self.commit_bytes_max > self.file_bytes:
            raise ValueError(
                f"JournalConfig.commit_bytes_max={self.commit_bytes_max} must fit in "
                f"file_bytes={self.file_bytes}"
            )
        for name in ("direct", "io_thread", "spare_thread"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"JournalConfig.{name}={getattr(self, name)!r} must be a bool")

    @property
    def ring_bytes(self) -> int:
        """The commit writer's ring buffer: the piece being written, the one being packed and
        room to spare (the packer runs at most one piece ahead, journal_writer.py)."""
        return RING_PIECES * self.piece_bytes


DEFAULT_CONFIG = JournalConfig()


class _File:
    __slots__ = ("seq", "path", "read_fd", "holders", "deletes")

    def __init__(self, seq: int, path: str, read_fd: int) -> None:
        self.seq = seq
        self.path = path
        self.read_fd = read_fd
        self.holders: set[int] = set()  # ledgers with entries or fence markers in this file
        self.deletes: set[int] = set()  # ledgers whose newest delete marker is in this file


class _Ledger:
    __slots__ = ("entries", "last_entry_id", "lac", "fenced_epoch", "fence_seq")

    def __init__(self) -> None:
        self.entries: dict[int, tuple[int, int, int]] = {}  # entry -> (file_seq, pos, bytes)
        self.last_entry_id = -1
        self.lac = -1
        self.fenced_epoch: int | None = None
        self.fence_seq: int | None = None  # the file of the newest marker at fenced_epoch


class _Queued(NamedTuple):
    kind: int
    ledger_id: int
    entry_id: int
    epoch: int
    lac: int
    payload: memoryview | bytes
    token: object


class Journal:
    """The storage engine of one bookie data directory (see module docstring)."""

    def __init__(
        self,
        directory: str,
        config: JournalConfig = DEFAULT_CONFIG,
        *,
        disk: Disk | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open (recover) the journal in `directory`; every file operation goes through
        `disk` (default: the real file system, `OsDisk`); `clock` times ledgers' adds
        (`compact_quiet_s`)."""
        self.directory = directory
        self._clock = clock
        self._opened_at = clock()
        self._added_at: dict[int, float] = {}  # ledger -> clock() of its last add_entry
        self.config = config
        self.commit_wait_us_max = config.commit_wait_us_max
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        disk = disk if disk is not None else OsDisk()
        self._disk: Disk = disk
        try:
            self._lock_fd = disk.lock_dir(directory)
        except BlockingIOError:
            raise StorageError(f"journal {directory} is open in another process") from None
        self.durability_mode = disk.durability_mode(directory, allow_direct=config.direct)
        self._payload_max = min(RECORD_PAYLOAD_BYTES_MAX, config.file_bytes - HEADER_BYTES)
        self._files: dict[int, _File] = {}  # by file_seq, oldest first
        self._free: list[str] = []  # paths of free files, oldest first
        self._ledgers: dict[int, _Ledger] = {}
        self._deleted: dict[int, int] = {}  # ledger -> file_seq of its newest delete marker
        self._doomed: set[int] = set()  # deleted or delete staged: no more entries/fences
        self._tokens: list[object] = []  # of the records staged since `commit` last returned
        self._held: _Queued | None = None  # the newest staged record, not yet packed
        self._commit_open = False  # the writer holds a begun commit (`_begin_commit`)
        self._commit_base = 0  # its file position
        self._commit_pos = 0  # the file position of its next packed record
        self._commit_used = 0  # its record bytes (the held record included)
        self._commit_limit = 0  # the record bytes it may take
        self._commit_records: list[JournalRecord] = []  # its packed records
        self._failed: BaseException | None = None
        self._closed = False
        self._cur: _File | None = None
        self._write_fd = -1
        self._write_pos = 0
        self._capacity = 0
        self._next_commit_seq = 1
        self._next_file_seq = 1
        self._maybe_removable = False
        self._compact_plan: tuple[int, deque[tuple[int, int, int, int]]] | None = None
        self._compact_skip: tuple[int, int] | None = None  # (file seq, deletes) found too live
        self._deletes_applied = 0
        self._writer = CommitWriter(
            disk,
            piece_bytes=config.piece_bytes,
            ring_bytes=config.ring_bytes,
            threaded=config.io_thread,
        )
        weakref.finalize(self, self._writer.stop)  # a journal dropped unclosed (simulation)
        self._spare = SpareMaker(
            disk,
            directory,
            config.file_bytes,
            direct=self.durability_mode == MODE_DIRECT,
            pace=config.spare_fill_bytes_per_s,
            threaded=config.spare_thread,
        )
        self._remover = (
            FileRemover("journal-remover")
            if config.spare_thread and isinstance(disk, OsDisk)
            else None
        )
        """Removes files in steps on its own thread (an unlink of a whole file stalled every
        fdatasync of the file system, file_removal.py); None: unlinked at once, inline."""
        if self._remover is not None:
            self._remover.start()
        self._handed = 0  # commits handed to the writer
        # commits handed to the writer, not yet applied: number, bytes, pieces, trigger, records
        self._unsynced: deque[tuple[int, int, int, str, list[JournalRecord]]] = deque()
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # --- recovery --------------------------------------------------------------------
    def _recover(self) -> None:
        seqs: list[int] = []
        free: list[tuple[int, str]] = []
        names = self._disk.listdir(self.directory)
        self._spare.found(names)
        for name in names:
            if (seq := parse_file_name(name, "journal-")) is not None:
                seqs.append(seq)
            elif (seq := parse_file_name(name, "free-")) is not None:
                free.append((seq, os.path.join(self.directory, name)))
            elif parse_file_name(name, TRASH_PREFIX) is not None:  # removal cut short
                self._remove(os.path.join(self.directory, name))
        seqs.sort()
        if seqs and seqs[-1] - seqs[0] + 1 != len(seqs):
            raise DataCorruption(f"journal {self.directory}: file seqs not contiguous: {seqs}")
        free.sort()
        self._next_file_seq = max([1] + [s + 1 for s in seqs] + [s + 1 for s, _ in free])
        for _, path in free[self.config.files_recycled_max :]:
            self._disk.unlink(path)
        self._free = [path for _, path in free[: self.config.files_recycled_max]]
        prev: int | None = None
        end = ScanEnd(0, None, False)
        for seq in seqs:
            end = self._replay_file(seq, prev, last=seq == seqs[-1])
            prev = end.last_commit_seq
        self._next_commit_seq = (prev or 0) + 1
        if seqs:
            self._resume(self._files[seqs[-1]], end)
        else:
            self._open_next_file()
        self._rebuild_holders()
        self._remove_files()
        self._want_spare()

    def _replay_file(self, seq: int, prev: int | None, *, last: bool) -> ScanEnd:
        path = os.path.join(self.directory, journal_file_name(seq))
        file = self._files[seq] = _File(seq, path, self._disk.open_read(path))
        result: list[ScanEnd] = []
        if self._disk.size(file.read_fd) < HEADER_BYTES:
            return ScanEnd(0, prev, False)
        with self._disk.read_all(file.read_fd) as view:
            for record in scan_file(
                view, path=path, file_seq=seq, prev_commit_seq=prev, last=last, result=result
            ):
                self._apply(record)
            end = result[0]
            # remains of the in-flight commit must not mix with the next commit written at
            # the same position: zero them before writing there
            stop = end.end_pos + max(_TORN_EXTENT_BYTES, self.config.commit_bytes_max)
            dirty = torn_extent(view, end.end_pos, stop, seq) if last else end.end_pos
            if last and dirty > end.end_pos:
                log.warning(
                    "journal %s: torn tail cut at position=%d after commit_seq=%s "
                    "(its remains zeroed up to %d)",
                    path,
                    end.end_pos,
                    end.last_commit_seq,
                    dirty,
                )
                self.counters["tail_cuts"] += 1
            elif last and end.torn:  # nothing of this file there: nothing to cut
                log.info(
                    "journal %s: after commit_seq=%s, position=%d holds no record of this "
                    "file (a recycled file's old contents, or a commit torn before any of "
                    "its records landed)",
                    path,
                    end.last_commit_seq,
                    end.end_pos,
                )
        if dirty > end.end_pos:
            self._zero(path, end.end_pos, dirty)
        return end

    def _rebuild_holders(self) -> None:
        """After replay, a file holds exactly the live ledgers whose index entries or fence
        marker are in it: a file whose records were all copied forward (compaction that
        crashed before the removal) or deleted is removable."""
        for file in self._files.values():
            file.holders = set()
        files = self._files
        for ledger_id, ledger in self._ledgers.items():
            for file_seq, _, _ in ledger.entries.values():
                files[file_seq].holders.add(ledger_id)
            if ledger.fence_seq is not None:
                files[ledger.fence_seq].holders.add(ledger_id)

    def _zero(self, path: str, start: int, stop: int) -> None:
        disk = self._disk
        with mmap.mmap(-1, stop - start) as zeros:
            # buffered: the end of a crashed file may be unaligned
            fd = disk.open_write(path, direct=False)
            try:
                if disk.pwrite(fd, zeros, start) != stop - start:
                    raise OSError(errno.EIO, f"short write zeroing {path}")
                disk.fdatasync(fd)
            finally:
                disk.close(fd)

    def _create_file(self, path: str) -> None:
        """Preallocate and zero-fill a new journal file, then fsync it, in the commit path
        (no spare at hand). Writing into fallocate's unwritten extents makes every commit's
        fdatasync also commit the extent conversion (measured here: 1.4 GB/s instead of
        2.4 GB/s of 4 MiB O_DIRECT commits), so a file is written once with zeros before it
        holds records (recycled files already are)."""
        create_zeroed(
            self._disk, path, self.config.file_bytes, direct=self.durability_mode == MODE_DIRECT
        )

    def _want_spare(self) -> None:
        """Have the next file made in the background if no recycled one is free."""
        if not self._free:
            self._spare.want()

    def _resume(self, file: _File, end: ScanEnd) -> None:
        self._write_fd = self._open_write_fd(file.path)
        size = self._disk.size(self._write_fd)
        if size < self.config.file_bytes:  # crashed during creation, or file_bytes grew
            self._disk.allocate(self._write_fd, self.config.file_bytes)
            self._disk.fsync(self._write_fd)
        self._cur = file
        self._write_pos = end.end_pos
        self._capacity = max(size, self.config.file_bytes)

    def _open_write_fd(self, path: str) -> int:
        return self._disk.open_write(path, direct=self.durability_mode == MODE_DIRECT)

    # --- write side ------------------------------------------------------------------
    def add_entry(
        self,
        ledger_id: int,
        entry_id: int,
        *,
        epoch: int,
        lac: int,
        payload: bytes | memoryview,
        token: object,
    ) -> None:
        """Stage an entry; the payload must stay unchanged until `commit` returns."""
        self._check_usable()
        self._check_ids(ledger_id, epoch)
        if not 0 <= entry_id <= _U64_MAX or not -1 <= lac <= _I64_MAX:
            raise ValueError(f"journal add_entry: entry_id={entry_id} lac={lac} out of range")
        view = memoryview(payload)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes > self._payload_max:
            raise ValueError(
                f"journal add_entry ledger={ledger_id} entry={entry_id}: payload of "
                f"{view.nbytes} bytes > {self._payload_max}"
            )
        self._stage(_Queued(KIND_ENTRY, ledger_id, entry_id, epoch, lac, view, token))
        if self.config.compact_quiet_s:
            self._added_at[ledger_id] = self._clock()

    def fence(self, ledger_id: int, *, epoch: int, token: object) -> None:
        """Stage a fence marker: once committed, `fenced_epoch(ledger_id)` is at least
        `epoch`."""
        self._check_usable()
        self._check_ids(ledger_id, epoch)
        self._stage(_Queued(KIND_FENCE, ledger_id, 0, epoch, -1, b"", token))

    def delete_ledger(self, ledger_id: int, *, token: object) -> None:
        """Stage a delete marker; deleting an unknown or deleted ledger is allowed."""
        self._check_usable()
        self._check_ids(ledger_id, 0, deleting=True)
        self._stage(_Queued(KIND_DELETE, ledger_id, 0, 0, -1, b"", token))
        self._doomed.add(ledger_id)

    def _check_ids(self, ledger_id: int, epoch: int, *, deleting: bool = False) -> None:
        if not 0 <= ledger_id <= _U64_MAX or not 0 <= epoch <= _U64_MAX:
            raise ValueError(f"journal: ledger_id={ledger_id} epoch={epoch} out of range")
        if not deleting and ledger_id in self._doomed:
            raise ValueError(f"journal: ledger {ledger_id} is deleted")

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(
                f"journal {self.directory} failed earlier ({self._failed!r}); refusing"
            ) from self._failed
        if self._closed:
            raise StorageError(f"journal {self.directory} is closed")

    @property
    def latency(self) -> dict[str, LatencyWindow]:
        """The commit writer's disk-call durations ("write", "sync"; latency.py)."""
        return self._writer.latency

    def pending(self) -> int:
        """Records staged since `commit` last returned."""
        return len(self._tokens)

    def commit(self) -> list[object]:
        """Make every staged record durable; return their tokens, in order."""
        self._check_usable()
        return self._commit()

    def _commit(self, trigger: str = "trigger_queue_empty") -> list[object]:
        try:
            if self._held is not None:
                self._end_commit(trigger)
            self._settle()
            if self._maybe_removable:
                self._remove_files()
        except OSError as exc:
            raise self._fail(exc, "commit") from exc
        tokens, self._tokens = self._tokens, []
        return tokens

    def compact_step(self) -> int:
        """Copy forward up to `compact_step_bytes` of the oldest file's live records, if it
        is due for compaction (module docstring), and commit them; once none is left there,
        remove the file. Only between commits (nothing staged; else 0). Returns the records
        copied. Fail-stop like `commit`, also when a record to copy fails its CRC."""
        self._check_usable()
        config = self.config
        if self._tokens or not config.compact_live_percent:
            return 0
        if len(self._files) <= max(config.compact_files_min, 1):
            return 0
        oldest = next(iter(self._files.values()))
        if oldest is self._cur:
            return 0
        plan = self._compact_plan
        if plan is None or plan[0] != oldest.seq:
            if self._compact_skip == (oldest.seq, self._deletes_applied):
                return 0
            if not self._quiet(oldest):
                return 0
            items, live = self._live_records(oldest.seq)
            too_live = live * 100 > config.file_bytes * config.compact_live_percent
            if too_live and not self._mostly_dead():
                self._compact_skip = (oldest.seq, self._deletes_applied)
                return 0
            plan = self._compact_plan = (oldest.seq, deque(items))
        seq, items = plan
        moved = moved_bytes = 0
        while items and moved_bytes < config.compact_step_bytes:
            _, kind, ledger_id, entry_id = items.popleft()
            ledger = self._ledgers.get(ledger_id)
            if ledger is None or ledger_id in self._doomed:
                continue
            if kind == KIND_FENCE:
                if ledger.fence_seq != seq or ledger.fenced_epoch is None:
                    continue  # fenced again since: that marker is newer
                item = _Queued(KIND_FENCE, ledger_id, 0, ledger.fenced_epoch, -1, b"", _RELOCATED)
            else:
                location = ledger.entries.get(entry_id)
                if location is None or location[0] != seq:
                    continue  # rewritten since
                try:
                    record, payload = self._read_record(ledger_id, entry_id, location, fail=True)
                except DataCorruption as exc:  # damaged durable data: this replica stops
                    self._failed = exc
                    log.critical(
                        "journal %s: compaction found damage, fail-stop: %s", self.directory, exc
                    )
                    raise StorageError(f"journal {self.directory}: compaction: {exc}") from exc
                lac = max(record.lac, ledger.lac)
                item = _Queued(
                    KIND_ENTRY, ledger_id, entry_id, record.epoch, lac, payload, _RELOCATED
                )
                moved_bytes += len(payload)
            self._stage(item)
            moved += 1
        if moved:
            self._commit("trigger_compaction")  # its own count: not a group-commit trigger
            self.counters["records_relocated"] += moved
            self.counters["bytes_relocated"] += moved_bytes
        if not items:
            self._compact_plan = None
            file = self._files.get(seq)
            if file is not None:
                deleted = self._deleted
                file.holders = {h for h in file.holders if h in deleted or self._holds(h, seq)}
            self.counters["compactions"] += 1
            try:
                self._remove_files()
            except OSError as exc:
                raise self._fail(exc, "compact") from exc
        return moved

    def _quiet(self, file: _File) -> bool:
        """True if no live ledger in `file` had an add in the last `compact_quiet_s` (a
        ledger with no add since this journal opened counts as added at the open)."""
        quiet = self.config.compact_quiet_s
        if not quiet:
            return True
        now = self._clock()
        for ledger_id in file.holders:
            if ledger_id in self._doomed or ledger_id not in self._ledgers:
                continue
            if now - self._added_at.get(ledger_id, self._opened_at) < quiet:
                return False
        return True

    def _mostly_dead(self) -> bool:
        """True if the files before the current one hold at most `compact_live_percent` of
        their size in live entries: then an oldest file livelier than that (a container that
        wrote a lot into its open ledger and went idle) pins mostly dead files behind it, and
        copying it forward frees them. During an LTS outage everything is live: no copying."""
        assert self._cur is not None  # compact_step runs on an open journal only
        cur = self._cur.seq
        live = 0
        for ledger_id, ledger in self._ledgers.items():
            if ledger_id in self._doomed:
                continue
            for file_seq, _, size in ledger.entries.values():
                if file_seq != cur:
                    live += packed_bytes(size)
        older = len(self._files) - 1  # the current file is one of them
        return live * 100 <= older * self.config.file_bytes * self.config.compact_live_percent

    def _live_records(self, seq: int) -> tuple[list[tuple[int, int, int, int]], int]:
        """The live records in file `seq` as (position, kind, ledger, entry), in file order,
        and their packed bytes."""
        items: list[tuple[int, int, int, int]] = []
        live = 0
        for ledger_id in self._files[seq].holders:
            ledger = self._ledgers.get(ledger_id)
            if ledger is None or ledger_id in self._doomed:
                continue
            for entry_id, (file_seq, pos, size) in ledger.entries.items():
                if file_seq == seq:
                    items.append((pos, KIND_ENTRY, ledger_id, entry_id))
                    live += packed_bytes(size)
            if ledger.fence_seq == seq:
                items.append((0, KIND_FENCE, ledger_id, 0))
                live += packed_bytes(0)
        items.sort()
        return items, live

    def _holds(self, ledger_id: int, seq: int) -> bool:
        """True if ledger `ledger_id` has an index entry or its fence marker in file `seq`."""
        ledger = self._ledgers.get(ledger_id)
        if ledger is None:
            return False
        return ledger.fence_seq == seq or any(s == seq for s, _, _ in ledger.entries.values())

    def wait_written(self) -> None:
        """Wait until the pieces of the staged records handed to the writer so far are
        written. Nothing needs it for safety (`commit` waits for everything); the
        simulation calls it after each step, so that its disk calls keep one replayable
        order with the I/O thread too."""
        self._check_usable()
        try:
            self._writer.wait_written()
        except OSError as exc:
            raise self._fail(exc, "write") from exc

    def _fail(self, exc: OSError, where: str) -> StorageError:
        """Fail-stop: refuse everything from now on; what was durable before is applied."""
        self._failed = exc
        self._apply_synced()  # what was durable before the error, as without the writer
        log.critical("journal %s: I/O error, fail-stop: %r", self.directory, exc)
        return StorageError(
            f"journal {self.directory}: I/O error in {where}: {exc}", errno=exc.errno
        )

    def _stage(self, item: _Queued) -> None:
        """Take a validated record into the current commit (`commit_bytes_max` and the end
        of the file cut commits; an entry larger than `commit_bytes_max` gets one of its
        own). The record before it is packed now, so the writer writes pieces while the
        caller goes on staging; the newest one is held back until the next record or
        `commit` tells whether it ends its commit (its header carries the flag)."""
        size = packed_bytes(len(item.payload))
        try:
            self._spare.check()  # the spare thread's I/O error is this journal's
            if self._remover is not None:
                self._remover.check()  # and so is the remover's
            if self._held is not None:
                if self._commit_used + size > self._commit_limit:
                    self._end_commit(
                        "trigger_bytes_max"
                        if self._commit_limit == self.config.commit_bytes_max
                        or self._commit_used > self.config.commit_bytes_max
                        else "trigger_file_end"
                    )
                else:
                    self._pack(self._held, 0)
            if not self._commit_open:
                self._begin_commit(size)
        except OSError as exc:
            raise self._fail(exc, "add") from exc
        self._held = item
        self._commit_used += size
        self._tokens.append(item.token)

    def _begin_commit(self, first: int) -> None:
        """Begin a commit whose first record packs to `first` bytes; rolls over to the
        next file first if that record does not fit in this one."""
        if align_up(first) > self._capacity - self._write_pos:
            self._open_next_file()
        assert self._cur is not None
        self._commit_base = self._commit_pos = self._write_pos
        self._commit_used = 0
        self._commit_limit = min(self.config.commit_bytes_max, self._capacity - self._write_pos)
        self._commit_records = []
        self._writer.begin(self._write_fd, self._write_pos, first)
        self._commit_open = True

    def _pack(self, item: _Queued, flags: int) -> None:
        """Copy one record into the writer (it writes each piece once full)."""
        kind, ledger_id, entry_id, epoch, lac, payload, _ = item
        file = self._cur
        assert file is not None and self._commit_open
        pos = self._commit_pos
        commit_seq = self._next_commit_seq
        writer = self._writer
        size = len(payload)
        writer.put(
            seal_header(kind, flags, payload, file.seq, commit_seq, ledger_id, entry_id, epoch, lac)
        )
        writer.put(payload)
        if size & 7:
            writer.put(_PADDING[: -size & 7])
        self._commit_records.append(
            JournalRecord(
                kind, flags, size, file.seq, commit_seq, ledger_id, entry_id, epoch, lac, pos
            )
        )
        self._commit_pos = pos + packed_bytes(size)

    def _end_commit(self, trigger: str) -> None:
        """Pack the held record as the commit's last and hand the commit's fdatasync over;
        its records are applied to the index once that returned."""
        held, self._held = self._held, None
        assert held is not None
        self._pack(held, FLAG_COMMIT_END)
        total, pieces = self._writer.end()
        self._commit_open = False
        used = self._commit_used
        assert total == align_up(used) == align_up(self._commit_pos - self._commit_base), (
            total,
            used,
        )
        self._write_pos = self._commit_base + total
        self._next_commit_seq += 1
        self._handed += 1
        self._unsynced.append((self._handed, total, pieces, trigger, self._commit_records))
        self._commit_records = []

    def _settle(self) -> None:
        """Wait until every commit handed to the writer is durable; apply them."""
        self._writer.drain()
        self._apply_synced()
        assert not self._unsynced, len(self._unsynced)

    def _apply_synced(self) -> None:
        """Apply to the index the records of the commits whose fdatasync returned."""
        synced, unsynced, counters = self._writer.synced, self._unsynced, self.counters
        while unsynced and unsynced[0][0] <= synced:
            _, total, pieces, trigger, records = unsynced.popleft()
            counters[trigger] += 1
            counters["commits"] += 1
            counters["syncs"] += 1
            counters["pieces"] += pieces
            counters["records"] += len(records)
            counters["bytes"] += total
            self._apply_commit(records)

    def _apply_commit(self, records: list[JournalRecord]) -> None:
        """`_apply` for the records of one commit (one file), with a fast path for the
        entries of ledgers already known (most of them)."""
        ledgers, deleted = self._ledgers, self._deleted
        holders = self._files[records[0].file_seq].holders
        for record in records:
            ledger_id = record.ledger_id
            ledger = ledgers.get(ledger_id)
            if record.kind != KIND_ENTRY or ledger is None or ledger_id in deleted:
                self._apply(record)
                continue
            holders.add(ledger_id)
            entry_id = record.entry_id
            ledger.entries[entry_id] = (record.file_seq, record.pos, record.payload_bytes)
            if entry_id > ledger.last_entry_id:
                ledger.last_entry_id = entry_id
            if record.lac > ledger.lac:
                ledger.lac = record.lac

    def _apply(self, record: JournalRecord) -> None:
        """Apply one durable record (from a commit or from replay) to the index."""
        kind, ledger_id, entry_id, file_seq = (
            record.kind,
            record.ledger_id,
            record.entry_id,
            record.file_seq,
        )
        file = self._files[file_seq]
        if kind == KIND_DELETE:
            self._ledgers.pop(ledger_id, None)
            self._added_at.pop(ledger_id, None)
            old = self._deleted.get(ledger_id)
            if old is not None and old in self._files:
                self._files[old].deletes.discard(ledger_id)
            self._deleted[ledger_id] = file_seq
            file.deletes.add(ledger_id)
            self._doomed.add(ledger_id)
            self._maybe_removable = True
            self._deletes_applied += 1
            return
        if ledger_id in self._deleted:  # only in replay: re-created after a pruned delete
            self._files[self._deleted.pop(ledger_id)].deletes.discard(ledger_id)
            self._doomed.discard(ledger_id)
        ledger = self._ledgers.get(ledger_id)
        if ledger is None:
            ledger = self._ledgers[ledger_id] = _Ledger()
        file.holders.add(ledger_id)
        if kind == KIND_ENTRY:
            ledger.entries[entry_id] = (file_seq, record.pos, record.payload_bytes)
            ledger.last_entry_id = max(ledger.last_entry_id, entry_id)
            ledger.lac = max(ledger.lac, record.lac)
        elif ledger.fenced_epoch is None or record.epoch >= ledger.fenced_epoch:
            ledger.fenced_epoch = record.epoch
            ledger.fence_seq = file_seq

    # --- files -----------------------------------------------------------------------
    def _open_next_file(self) -> None:
        # the write fd is closed below: nothing may be in flight on it (what is durable
        # now is applied to the index by the `commit` that returns its tokens)
        self._writer.drain()
        seq = self._next_file_seq
        self._next_file_seq += 1
        path = os.path.join(self.directory, journal_file_name(seq))
        disk = self._disk
        if self._free:
            disk.rename(self._free.pop(0), path)
            disk.fsync_dir(self.directory)
            self.counters["files_recycled"] += 1
        elif (spare := self._spare.take()) is not None:
            disk.rename(spare, path)
            disk.fsync_dir(self.directory)
            self.counters["files_spare"] += 1
        else:
            self._create_file(path)
            disk.fsync_dir(self.directory)
            self.counters["files_created"] += 1
        if self._write_fd >= 0:
            disk.close(self._write_fd)
            self._write_fd = -1
        self._files[seq] = _File(seq, path, disk.open_read(path))
        self._resume(self._files[seq], ScanEnd(0, None, False))
        self._maybe_removable = True
        self._want_spare()

    def _remove_files(self) -> None:
        """Remove files from the oldest end while the removal rule allows (module doc)."""
        self._maybe_removable = False
        for seq in list(self._files):
            file = self._files[seq]
            if file is self._cur or not all(h in self._deleted for h in file.holders):
                return
            del self._files[seq]
            self._disk.close(file.read_fd)
            for ledger_id in file.deletes:  # no older file holds its entries any more
                del self._deleted[ledger_id]
                self._doomed.discard(ledger_id)
            trash = None
            if len(self._free) < self.config.files_recycled_max:
                free = os.path.join(self.directory, f"free-{seq:016x}.jnl")
                self._disk.rename(file.path, free)
                self._free.append(free)
                self.counters["files_freed"] += 1
            elif self._remover is not None:  # no longer a journal file, then removed in steps
                trash = os.path.join(self.directory, f"{TRASH_PREFIX}{seq:016x}.jnl")
                self._disk.rename(file.path, trash)
                self.counters["files_deleted"] += 1
            else:
                self._disk.unlink(file.path)
                self.counters["files_deleted"] += 1
            self._disk.fsync_dir(self.directory)  # before the next one: removal stays oldest-first
            if trash is not None:  # only once the rename is durable: never a shrunk journal file
                self._remove(trash)

    def _remove(self, path: str) -> None:
        """Remove a file that is no journal file any more: in steps on the remover's thread,
        or at once."""
        if self._remover is not None:
            self._remover.remove(path)
        else:
            self._disk.unlink(path)

    def removals_done(self) -> bool:
        """No file waits to be removed (tests)."""
        return self._remover is None or self._remover.idle()

    def files(self) -> list[int]:
        """The file seqs of the journal files in use, oldest first."""
        return list(self._files)

    # --- state -----------------------------------------------------------------------
    def read_entry(self, ledger_id: int, entry_id: int) -> bytes | None:
        ledger = self._ledgers.get(ledger_id)
        location = ledger.entries.get(entry_id) if ledger is not None else None
        if location is None:
            return None
        return self._read_record(ledger_id, entry_id, location)[1]

    def _read_record(
        self, ledger_id: int, entry_id: int, location: tuple[int, int, int], *, fail: bool = False
    ) -> tuple[JournalRecord, bytes]:
        """The entry's record (CRC verified) and its payload; `fail`: an I/O error is
        fail-stop (compaction), else it is the caller's (a read is answered with it)."""
        file_seq, pos, size = location
        file = self._files[file_seq]
        try:
            data = self._disk.pread(file.read_fd, HEADER_BYTES + size, pos)
        except OSError as exc:
            if fail:
                raise self._fail(exc, "compact read") from exc
            raise StorageError(f"journal read {file.path} at {pos}: {exc}") from exc
        record = read_record(data, 0, file_seq)
        if (
            record is None
            or record.kind != KIND_ENTRY
            or (record.ledger_id, record.entry_id) != (ledger_id, entry_id)
        ):
            raise DataCorruption(
                f"journal {file.path}: entry {entry_id} of ledger {ledger_id} at position "
                f"{pos} fails verification",
                path=file.path,
                position=pos,
                ledger=ledger_id,
                entry=entry_id,
            )
        return record, data[HEADER_BYTES:]

    def entry_ranges(self, ledger_id: int) -> list[tuple[int, int]]:
        """The committed entries of a ledger as (first, last) runs, ascending."""
        ledger = self._ledgers.get(ledger_id)
        runs: list[tuple[int, int]] = []
        for entry_id in sorted(ledger.entries) if ledger is not None else ():
            if runs and runs[-1][1] == entry_id - 1:
                runs[-1] = (runs[-1][0], entry_id)
            else:
                runs.append((entry_id, entry_id))
        return runs

    def last_entry_id(self, ledger_id: int) -> int:
        ledger = self._ledgers.get(ledger_id)
        return ledger.last_entry_id if ledger is not None else -1

    def lac(self, ledger_id: int) -> int:
        ledger = self._ledgers.get(ledger_id)
        return ledger.lac if ledger is not None else -1

    def fenced_epoch(self, ledger_id: int) -> int | None:
        ledger = self._ledgers.get(ledger_id)
        return ledger.fenced_epoch if ledger is not None else None

    @property
    def disk(self) -> Disk:
        return self._disk

    def deleted(self, ledger_id: int) -> bool:
        """True if the ledger is deleted, or its delete is staged (no entries, no fences)."""
        return ledger_id in self._doomed

    def ledgers(self) -> list[int]:
        return sorted(self._ledgers)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tokens:
            log.warning(
                "journal %s: closed with %d records not committed",
                self.directory,
                len(self._tokens),
            )
            self._tokens.clear()
            self._held = None
        for file in self._files.values():
            self._disk.close(file.read_fd)
        self._files.clear()
        if self._write_fd >= 0:
            self._disk.close(self._write_fd)
            self._write_fd = -1
        self._writer.close()
        self._spare.close()
        if self._remover is not None:
            self._remover.close()
        self._disk.close(self._lock_fd)
