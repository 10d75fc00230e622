"""Removing large preallocated files without stalling the other writers of the disk.

Unlinking a preallocated file frees all its extents in one file-system transaction; on
ext4 mounted with `discard` (as here) that transaction also discards them, and every other
fdatasync of the file system waits for it. Traced RF=3 runs showed every bookie's commit
stalled 165-170 ms at the moment one bookie unlinked a journal file; it does not matter
which thread unlinks: the stall is the file system's. `remove_in_steps` shrinks the file
`STEP_BYTES` at a time (ftruncate + fsync: each step's extents freed, and discarded, in a
transaction of their own), pausing `PAUSE_S` after each, then unlinks what is left.
`perf/bench_file_removal.py --runs 5`: the worst fdatasync of a 256 KiB write + fdatasync
loop was 52.8 ms while 2 x 256 MiB files were unlinked, 3.9 ms while they were removed in
steps (medians; p99 0.3 ms both ways). `FileRemover` does that on a thread
of its own, so the caller waits for none of it.

A file handed to a remover must no longer be anything its owner relies on (the journal
renames it to `trash-<seq>.jnl` and fsyncs the directory first; a crash part way leaves a
shorter trash file, which the next open hands over again). Errors: the first `OSError` of
the thread is kept and raised by `check` (the owner fails stop, as for its own I/O errors);
nothing is retried.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

STEP_BYTES = 4 * 1024 * 1024
"""Bytes one step frees."""
PAUSE_S = 0.05
"""Pause after each step (a 256 MiB file goes in about 3.3 s). 16 MiB steps with 20 ms
pauses made the stalls short but frequent enough to raise an RF=1 writer's p95 at 50 MB/s
from ~1.9 to ~3.1 ms (perf/bench_catchup.py before its reader starts, 3 runs each);
4 MiB with 50 ms left it at 1.6-1.7 ms."""
QUEUED_MAX = 1024
"""Tasks waiting for the thread; beyond it a task runs on the caller's thread."""


def remove_in_steps(
    path: str,
    *,
    step_bytes: int = STEP_BYTES,
    pause_s: float = PAUSE_S,
    stopping: threading.Event | None = None,
) -> None:
    """Shrink `path` a step at a time, then unlink it (see the module doc). Once `stopping`
    is set the rest goes at once. A file already gone is not an error."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        while size > step_bytes and not (stopping is not None and stopping.is_set()):
            size -= step_bytes
            os.ftruncate(fd, size)
            os.fsync(fd)
            if pause_s:
                if stopping is not None:
                    stopping.wait(pause_s)
                else:
                    time.sleep(pause_s)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class FileRemover:
    """A thread of its own that runs removal tasks in order: `remove` (a file, in steps,
    module doc), or any `submit`ted task (the local log's retiring of truncated ledgers'
    files). The first `OSError` of a task ends the thread; it is kept for `check` and handed
    to `fatal`, if given (the owner then fails stop)."""

    def __init__(self, name: str, *, fatal: Callable[[BaseException], None] | None = None):
        self._fatal = fatal
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self.stopping = threading.Event()
        """Set by `close`: what is still to be removed goes without the pauses."""
        self._failed: OSError | None = None
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def remove(self, path: str) -> None:
        """Remove `path` in steps, in the background."""
        self.submit(lambda: remove_in_steps(path, stopping=self.stopping))

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` on the thread; on the caller's, at once, if `QUEUED_MAX` tasks wait
        already or the thread is not running."""
        with self._cond:
            if len(self._queue) < QUEUED_MAX and self._thread.is_alive():
                self._queue.append(task)
                self._cond.notify()
                return
        task()

    def idle(self) -> bool:
        """Nothing queued and nothing running (tests)."""
        with self._cond:
            return not self._queue and not self._busy

    def check(self) -> None:
        """Raise the thread's I/O error, if any (the owner is then fail-stop)."""
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        """Run what is queued (removals without pauses), then end the thread."""
        self.stopping.set()
        with self._cond:
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self.stopping.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                task = self._queue.popleft()
                self._busy = True
            try:
                task()
            except OSError as exc:
                log.critical("%s: I/O failure: %r", self._thread.name, exc)
                self._failed = exc
                if self._fatal is not None:
                    self._fatal(exc)
                return
            finally:
                with self._cond:
                    self._busy = False
