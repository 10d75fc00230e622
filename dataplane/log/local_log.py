"""The single-replica durable log of one container, and the committer that makes it durable.

`LocalDurableLog` implements the `DurableLog` interface (see __init__.py) on ledger files in
the container's log directory: records are built in page-aligned buffers (anonymous mmap),
written at aligned positions (O_DIRECT where supported) and made durable with `fdatasync`
before anything is acknowledged. Ledger metadata (epoch, ledger list) changes only by
compare-and-set in the coordination store; the directory is `flock`ed so that two processes
can never own one log at once.

`Committer` is one thread per worker process shared by all its containers' logs. Each cycle
it takes every record queued since the last cycle, writes them, issues one `fdatasync` per
touched ledger, and only then hands the completions back in submission order (group commit:
one sync covers everything written in the cycle; a frame queued while a sync runs goes into
the next cycle, so building the next frame never waits for the current one). An I/O error is
fail-stop: nothing of the failed cycle is acknowledged, the error is reported, and the
process must exit; a failed fsync is never retried. The files of truncated ledgers are
kept for reuse by later ledgers or removed, by a thread of its own (`FileRemover`), after the
metadata no longer names them.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from streamvault.client.protocol.crashpoints import crash_point
from streamvault.client.protocol.errors import DataCorruption, StorageError
from streamvault.client.protocol.latency import LatencyWindow
from streamvault.dataplane.log.file_removal import FileRemover, remove_in_steps
from streamvault.dataplane.log.framing import (
    RECORD_HEADER_BYTES,
    RECORD_PAYLOAD_BYTES_MAX,
    align_up,
    record_bytes,
    seal_record,
)
from streamvault.dataplane.log.ledger import (
    LedgerFile,
    ScanEnd,
    free_path,
    ledger_path,
    parse_free_file_name,
    parse_ledger_file_name,
    scan_ledger,
)
from streamvault.dataplane.log.metadata import (
    CoordinationStore,
    LedgerInfo,
    LogMetadata,
    fsync_dir,
)
from streamvault.dataplane.log.probe import MODE_DIRECT

log = logging.getLogger(__name__)


class LogLocation(NamedTuple):
    ledger_id: int
    record_pos: int
    entry_id: int


class WriteBuffer:
    """A page-aligned buffer for one record; the payload goes at `payload`."""

    __slots__ = ("mm", "view", "payload", "pooled")

    def __init__(self, payload_capacity: int, *, pooled: bool) -> None:
        self.mm = mmap.mmap(-1, align_up(RECORD_HEADER_BYTES + payload_capacity))
        self.view = memoryview(self.mm)
        self.payload = self.view[RECORD_HEADER_BYTES : RECORD_HEADER_BYTES + payload_capacity]
        self.pooled = pooled

    def close(self) -> None:
        self.payload.release()
        self.view.release()
        self.mm.close()


class BufferPool:
    """The record buffers of one log (main thread): `buffers` pooled ones of the frame size,
    and one of its own for a record larger than that; at most `buffers` records in flight
    (counted from `submitted` to `release`)."""

    def __init__(self, key: str, config: LogConfig) -> None:
        self.key = key
        self.config = config
        self._free = [
            WriteBuffer(config.frame_payload_bytes, pooled=True) for _ in range(config.buffers)
        ]
        self.in_flight = 0

    def acquire(self, payload_bytes: int) -> WriteBuffer | None:
        """A buffer for a record of at least `payload_bytes`, or None at the in-flight limit."""
        if payload_bytes > RECORD_PAYLOAD_BYTES_MAX:
            raise ValueError(
                f"log {self.key}: payload_bytes={payload_bytes} > {RECORD_PAYLOAD_BYTES_MAX}"
            )
        if self.in_flight >= self.config.buffers:
            return None
        if payload_bytes > self.config.frame_payload_bytes:
            return WriteBuffer(payload_bytes, pooled=False)
        return self._free.pop() if self._free else None

    def submitted(self) -> None:
        self.in_flight += 1

    def release(self, buffer: WriteBuffer) -> None:
        """Return a buffer after its record completed."""
        self.in_flight -= 1
        if buffer.pooled:
            self._free.append(buffer)
        else:
            buffer.close()

    def close(self) -> None:
        for buffer in self._free:
            buffer.close()
        self._free.clear()


class LogConfig(NamedTuple):
    ledger_bytes: int = 128 * 1024 * 1024
    """Size of each preallocated ledger file; the log rolls over to a new ledger when full."""
    frame_payload_bytes: int = 1024 * 1024
    """Capacity of a pooled record buffer: the group-commit frame target."""
    buffers: int = 4
    """Pooled buffers per log: the most records one container has in flight."""
    read_fds_max: int = 32
    """Open read descriptors kept per log (LRU)."""
    free_ledgers_max: int = 2
    """Files of deleted ledgers kept per log for reuse by the next ledgers (LedgerFile)."""


class RollOver:
    """`holds_records` and `roll_over`, the same for both logs (`LocalDurableLog`,
    `ReplicatedLog`): each has `meta` (its LogMetadata), `ledger` (the open one, with
    `next_entry_id`) and `roll_requested`, which its write side turns into a rollover at
    the next record and clears when it opens a ledger."""

    meta: LogMetadata
    ledger: Any
    roll_requested: bool

    def holds_records(self) -> bool:
        """True if any ledger of this log holds a record (the open one included)."""
        ledger = self.ledger
        return len(self.meta.ledgers) > 1 or (ledger is not None and ledger.next_entry_id > 0)

    def roll_over(self) -> None:
        """Have the next record start a new ledger, if the open one holds any (the worker's
        side, while the container has nothing in flight: see Container.idle_checkpoint_due)."""
        ledger = self.ledger
        if ledger is not None and ledger.next_entry_id > 0:
            self.roll_requested = True


class LocalDurableLog(RollOver):
    """A container's durable log on local ledger files (replication factor 1)."""

    def __init__(
        self,
        directory: str,
        *,
        key: str,
        store: CoordinationStore,
        committer: Committer,
        mode: str,
        config: LogConfig | None = None,
    ) -> None:
        config = config or LogConfig()
        if config.ledger_bytes < 2 * record_bytes(RECORD_PAYLOAD_BYTES_MAX):
            raise ValueError(
                f"ledger_bytes={config.ledger_bytes} must hold two records of "
                f"{RECORD_PAYLOAD_BYTES_MAX} bytes"
            )
        self.directory = directory
        self.key = key
        self.store = store
        self.committer = committer
        self.mode = mode
        self.config = config
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = os.open(
            os.path.join(directory, ".owner.lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StorageError(f"log {key}: {directory} is owned by another process") from None
        self.meta = LogMetadata()
        self.meta_version = 0
        self.epoch = 0
        self.ledger: LedgerFile | None = None  # the open ledger (committer thread only)
        self.roll_requested = False  # by `roll_over`: the next record starts a new ledger
        self.pool = BufferPool(key, config)
        self._read_fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._free: list[str] = []  # files of deleted ledgers to reuse, oldest first
        self._free_lock = threading.Lock()  # committer thread takes, deleter thread adds
        self.counters = {"ledgers_created": 0, "ledgers_recycled": 0}

    # --- recovery --------------------------------------------------------------------
    def recover(self) -> Iterator[tuple[LogLocation, memoryview]]:
        """Fence (bump the epoch), then yield every durable record of the log in order.

        The crashed open ledger is closed at its last valid entry (a torn tail is cut);
        corruption raises DataCorruption. Afterwards `start()` opens a new ledger.
        """
        meta, version = self.store.get(self.key)
        meta = meta or LogMetadata()
        meta.epoch += 1
        version = self.store.cas(self.key, meta, version)
        self.epoch = meta.epoch
        for info in meta.ledgers:
            ends: list[ScanEnd] = []
            yield from self._ledger_records(info, ends)
            if info.state == "open":
                end = ends[0] if ends else ScanEnd(-1, 0, False)
                if end.cut_tail:
                    log.warning(
                        "log=%s ledger=%d torn tail cut at position=%d after entry=%d",
                        self.key,
                        info.ledger_id,
                        end.end_pos,
                        end.last_entry_id,
                    )
                info.state, info.last_entry_id = "closed", end.last_entry_id
        empty = [i.ledger_id for i in meta.ledgers if i.last_entry_id < 0]
        meta.ledgers = [i for i in meta.ledgers if i.last_entry_id >= 0]
        self.meta_version = self.store.cas(self.key, meta, version)
        self.meta = meta
        known = {i.ledger_id for i in meta.ledgers}
        unreferenced: list[tuple[str, int]] = []
        for name in sorted(os.listdir(self.directory)):  # kept free files first
            path = os.path.join(self.directory, name)
            if (ledger_id := parse_free_file_name(name)) is not None:
                unreferenced.append((path, ledger_id))
            elif (ledger_id := parse_ledger_file_name(name)) is not None and ledger_id not in known:
                unreferenced.append((path, ledger_id))  # empty or orphaned ledger
                log.info(
                    "log=%s unreferenced ledger=%d (empty=%s) retired",
                    self.key,
                    ledger_id,
                    ledger_id in empty,
                )
        self._retire(unreferenced, in_steps=False)  # recovery: nothing commits yet

    def scan_back(self) -> Iterator[Iterator[memoryview]]:
        """The durable payloads like `recover`'s, changing nothing (no fencing, no metadata
        update), in runs, newest run first, each in log order: here one run per ledger (a
        ledger file is read front to back). Recovery's first pass (ReplicatedLog.scan_back).
        Take each run before asking for the next."""
        meta, _ = self.store.get(self.key)
        for info in reversed((meta or LogMetadata()).ledgers):
            yield (payload for _, payload in self._ledger_records(info, []))

    def _ledger_records(
        self, info: LedgerInfo, ends: list[ScanEnd]
    ) -> Iterator[tuple[LogLocation, memoryview]]:
        path = ledger_path(self.directory, info.ledger_id)
        closed_last = info.last_entry_id if info.state == "closed" else None
        if not os.path.exists(path):
            if closed_last is not None and closed_last >= 0:
                raise DataCorruption(
                    f"log {self.key}: ledger {info.ledger_id} closed at entry "
                    f"{closed_last} but {path} is missing",
                    ledger=info.ledger_id,
                )
            return  # an open ledger whose file was never created: empty
        for record in scan_ledger(
            path, info.ledger_id, closed_last_entry_id=closed_last, result=ends
        ):
            yield LogLocation(info.ledger_id, record.record_pos, record.entry_id), record.payload

    def truncate_before(self, ledger_id: int) -> None:
        """Delete the closed ledgers older than `ledger_id` (their records are no longer
        needed: checkpointed and in LTS). Runs on the committer thread, after the records
        submitted before it, so ledger metadata only ever changes on that thread."""
        self.committer.run_task(self, lambda: self._truncate(ledger_id))

    def _truncate(self, ledger_id: int) -> list[int]:
        doomed = [
            i
            for i in self.meta.ledgers
            if i.ledger_id < ledger_id
            and i.state == "closed"
            and (self.ledger is None or i.ledger_id != self.ledger.ledger_id)
        ]
        if not doomed:
            return []
        self.meta.ledgers = [i for i in self.meta.ledgers if i not in doomed]
        # metadata first: a crash before the files are gone leaves unreferenced files, which
        # recovery retires; never metadata naming a deleted ledger. The files are retired
        # once the main thread has closed its descriptors of them (`forget_ledgers`)
        self.meta_version = self.store.cas(self.key, self.meta, self.meta_version)
        crash_point("truncate_after_meta")
        ids = [i.ledger_id for i in doomed]
        log.info("log=%s truncated ledgers=%s", self.key, ids)
        return ids

    def _retire(self, files: list[tuple[str, int]], *, in_steps: bool = True) -> None:
        """Keep the files (path, ledger id) of deleted ledgers, no longer in metadata, for
        reuse, up to `free_ledgers_max` of the right size, as `free-<ledger>.log`; remove
        the others (`in_steps`: shrunk away first, file_removal.py: an unlink of a whole
        ledger stalled every fdatasync of the file system, the committer's too), after the
        kept ones are in the pool (a removal in steps takes seconds). Then fsync the
        directory. Deleter thread, or recovery's."""
        changed = False
        doomed: list[str] = []
        for path, ledger_id in files:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                continue
            with self._free_lock:
                keep = (
                    size == self.config.ledger_bytes
                    and len(self._free) < self.config.free_ledgers_max
                )
            if keep:
                free = free_path(self.directory, ledger_id)
                if free != path:
                    os.rename(path, free)
                with self._free_lock:
                    self._free.append(free)
            else:
                doomed.append(path)
            changed = True
        for path in doomed:
            if in_steps:  # the rest at once when the worker stops
                remove_in_steps(path, stopping=self.committer.deleter_stopping)
            else:
                os.unlink(path)
        if changed:
            fsync_dir(self.directory)

    def forget_ledgers(self, ledger_ids: list[int]) -> None:
        """After truncation (main thread): close the read descriptors of the deleted
        ledgers, then have their files retired on the committer's deleter thread (kept for
        reuse or removed: removing a preallocated ledger took 30-130 ms here, ext4 with
        `discard`, during which no container of the worker could commit). Closing first
        matters: a kept file is rewritten by a later ledger, which a stale descriptor
        would then read."""
        for ledger_id in ledger_ids:
            fd = self._read_fds.pop(ledger_id, None)
            if fd is not None:
                os.close(fd)
        files = [(ledger_path(self.directory, i), i) for i in ledger_ids]
        self.committer.in_background(lambda: self._retire(files))

    def start(self) -> None:
        """Open a fresh ledger for writing (after `recover`)."""
        self._open_next_ledger()

    def _open_next_ledger(self) -> None:
        self.roll_requested = False
        meta = self.meta
        if self.ledger is not None:
            for info in meta.ledgers:
                if info.ledger_id == self.ledger.ledger_id:
                    info.state, info.last_entry_id = "closed", self.ledger.synced_entry_id
        ledger_id = meta.next_ledger_id
        meta.next_ledger_id += 1
        meta.ledgers.append(LedgerInfo(ledger_id, "open"))
        # metadata first: a crash before the file exists leaves an open ledger with no file,
        # which recovery treats as empty; never a file that metadata does not know about.
        self.meta_version = self.store.cas(self.key, meta, self.meta_version)
        if self.ledger is not None:
            self.ledger.close()
        with self._free_lock:
            recycled = self._free.pop(0) if self._free else None
        self.ledger = LedgerFile(
            self.directory,
            ledger_id,
            size_bytes=self.config.ledger_bytes,
            direct=self.mode == MODE_DIRECT,
            recycled=recycled,
        )
        self.counters["ledgers_recycled" if recycled else "ledgers_created"] += 1
        log.info(
            "log=%s epoch=%d opened ledger=%d recycled=%s",
            self.key,
            self.epoch,
            ledger_id,
            recycled is not None,
        )

    # --- write path (main thread) ------------------------------------------------------
    def acquire_buffer(self, payload_bytes: int) -> WriteBuffer | None:
        """A buffer for a record of at least `payload_bytes`, or None at the in-flight limit."""
        return self.pool.acquire(payload_bytes)

    @property
    def in_flight(self) -> int:
        return self.pool.in_flight

    def submit(self, buffer: WriteBuffer, payload_bytes: int, token: Any) -> None:
        self.pool.submitted()
        self.committer.submit(self, buffer, payload_bytes, token)

    def release(self, buffer: WriteBuffer) -> None:
        """Return a buffer after its record completed (main thread)."""
        self.pool.release(buffer)

    # --- committer thread ------------------------------------------------------------
    def write_record(self, buffer: WriteBuffer, payload_bytes: int) -> LogLocation:
        total = record_bytes(payload_bytes)
        ledger = self.ledger
        assert ledger is not None, "start() not called"
        if not ledger.fits(total) or self.roll_requested:  # set only while it holds some
            ledger.sync()
            self._open_next_ledger()
            crash_point("rollover_after_create")
            ledger = self.ledger
        entry_id = ledger.next_entry_id
        seal_record(
            buffer.view,
            payload_bytes,
            ledger_id=ledger.ledger_id,
            entry_id=entry_id,
            epoch=self.epoch,
            lac=ledger.synced_entry_id,
        )
        pos = ledger.write(buffer.view[:total])
        return LogLocation(ledger.ledger_id, pos, entry_id)

    def sync(self) -> None:
        assert self.ledger is not None
        self.ledger.sync()

    # --- read path -------------------------------------------------------------------
    def read(self, ledger_id: int, position: int, length: int) -> bytes:
        fd = self._read_fds.get(ledger_id)
        if fd is None:
            fd = os.open(ledger_path(self.directory, ledger_id), os.O_RDONLY)
            self._read_fds[ledger_id] = fd
            if len(self._read_fds) > self.config.read_fds_max:
                _, old = self._read_fds.popitem(last=False)
                os.close(old)
        else:
            self._read_fds.move_to_end(ledger_id)
        data = os.pread(fd, length, position)
        if len(data) != length:
            raise StorageError(
                f"log {self.key}: short read of ledger {ledger_id} at {position}: "
                f"{len(data)} of {length} bytes"
            )
        return data

    def close(self) -> None:
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        if self.ledger is not None:
            self.ledger.close()
        self.pool.close()
        os.close(self._lock_fd)


Completion = tuple[LocalDurableLog, WriteBuffer, Any, LogLocation]


def _take_queued(owner: Committer) -> list | None:
    """Everything queued for `owner`'s thread, waiting until there is some; None once it
    is stopping and nothing is left."""
    with owner._cond:
        while not owner._queue and not owner._stopping:
            owner._cond.wait()
        if not owner._queue:
            return None
        batch, owner._queue = owner._queue, []
        return batch


class Committer:
    """The group-commit thread of one worker (see module docstring)."""

    def __init__(
        self, deliver: Callable[[list[Completion]], None], fatal: Callable[[BaseException], None]
    ) -> None:
        self._deliver = deliver
        self._fatal = fatal
        self._queue: list[tuple[LocalDurableLog, WriteBuffer, int, Any]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self.counters = {"commit_cycles": 0, "commit_records": 0, "commit_syncs": 0}
        self.latency = {"commit": LatencyWindow()}
        """Each group-commit cycle: its records written, their ledgers fdatasync'd."""
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._deleter = FileRemover("ledger-deleter", fatal=fatal)
        """Retires the files of truncated ledgers (`LocalDurableLog._retire`: kept for
        reuse, or removed in steps, then their directory fsync'd) after the metadata that
        named them is gone. A crash before it gets to them leaves unreferenced files, which
        recovery retires; an I/O error is reported like the committer's (the worker stops)."""

    def start(self) -> None:
        self._thread.start()
        self._deleter.start()

    def in_background(self, task: Callable[[], None]) -> None:
        """Run `task` (retiring truncated ledgers' files) on the deleter thread."""
        self._deleter.submit(task)

    @property
    def deleter_stopping(self) -> threading.Event:
        """Set once the deleter stops (its removals then skip the pauses)."""
        return self._deleter.stopping

    def submit(
        self, log_: LocalDurableLog, buffer: WriteBuffer, payload_bytes: int, token: Any
    ) -> None:
        with self._cond:
            self._queue.append((log_, buffer, payload_bytes, token))
            if len(self._queue) == 1:
                self._cond.notify()

    def run_task(self, log_: LocalDurableLog, task: Callable[[], Any]) -> None:
        """Run `task` on the committer thread after everything submitted before it; its
        result comes back as a completion with buffer None and token ("task", result)."""
        with self._cond:
            self._queue.append((log_, None, 0, task))
            if len(self._queue) == 1:
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)
        self._deleter.close()

    def _run(self) -> None:
        try:
            while (batch := _take_queued(self)) is not None:
                self._cycle(batch)
        except BaseException as exc:  # fail-stop: report, acknowledge nothing more
            log.critical("committer: I/O failure, nothing of this cycle is acknowledged: %r", exc)
            self._fatal(exc)

    def _cycle(self, batch: list[tuple[LocalDurableLog, WriteBuffer, int, Any]]) -> None:
        started = time.monotonic()
        done: list[Completion] = []
        touched: dict[int, LocalDurableLog] = {}
        for log_, buffer, payload_bytes, token in batch:
            if buffer is None:  # a task: sync what came before it, then run it
                for other in touched.values():
                    other.sync()
                touched.clear()
                done.append((log_, None, ("task", token()), None))
                continue
            crash_point("before_write")
            location = log_.write_record(buffer, payload_bytes)
            touched[id(log_)] = log_
            done.append((log_, buffer, token, location))
        if touched:
            crash_point("after_write_before_sync")
        for log_ in touched.values():
            log_.sync()
        if touched:
            crash_point("after_sync_before_ack")
        self.counters["commit_cycles"] += 1
        self.counters["commit_records"] += len(done)
        self.counters["commit_syncs"] += len(touched)
        self.latency["commit"].record(time.monotonic() - started)
        self._deliver(done)
