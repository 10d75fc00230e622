"""The file operations the bookie journal does, behind one injectable interface.

`Disk` is exactly the set of file-system calls `Journal` (journal.py) makes, so a test can
replace the real file system with a simulated one (tests/support/faulty_disk.py: pending
writes, crashes that keep, drop or tear unsynced pages, EIO/ENOSPC on demand, misdirected
writes, bit flips). `OsDisk` is the real implementation: plain `os` calls, `flock`,
`posix_fallocate` and a read-only `mmap`, exactly what the journal did before it went
through this interface.

A handle is an int (a file descriptor for `OsDisk`). Contract every implementation keeps:
- Writes (`pwrite`, `allocate`) are durable only once `fdatasync` / `fsync` of the file
  returned; directory changes (`open_write(create=True)`, `rename`, `unlink`) only once
  `fsync_dir` of the directory returned.
- Any failure is an `OSError` (the journal turns it into fail-stop); nothing is retried
  here.
- `read_all` gives a view of the whole file that is valid only inside its `with` block, and
  whose `.obj` supports `find` over the whole file (journal_format's scanner needs it).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from streamvault.dataplane.log.metadata import fsync_dir
from streamvault.dataplane.log.probe import durability_mode

LOCK_FILE_NAME = ".journal.lock"


class Disk(Protocol):
    """The file system as the journal uses it (see module docstring)."""

    def durability_mode(self, directory: str, *, allow_direct: bool) -> str:
        """The mode the journal runs in (probe.MODE_DIRECT, probe.MODE_BUFFERED, ...)."""
        ...

    def lock_dir(self, directory: str) -> int:
        """Create `directory` if needed and take its exclusive lock (released by `close` of
        the returned handle); BlockingIOError if another owner holds it."""
        ...

    def listdir(self, directory: str) -> list[str]: ...

    def open_write(self, path: str, *, direct: bool, create: bool = False) -> int:
        """Open for read-write (O_DIRECT if `direct`); `create`: the file must not exist."""
        ...

    def open_read(self, path: str) -> int: ...

    def size(self, handle: int) -> int: ...

    def pwrite(self, handle: int, data: memoryview | bytes, pos: int) -> int: ...

    def pread(self, handle: int, size: int, pos: int) -> bytes: ...

    def read_all(self, handle: int) -> AbstractContextManager[memoryview]:
        """A read-only view of the whole file (not empty) for the duration of a `with`."""
        ...

    def allocate(self, handle: int, size: int) -> None:
        """Make the file at least `size` bytes (posix_fallocate; new bytes read as zeros)."""
        ...

    def fdatasync(self, handle: int) -> None: ...

    def fsync(self, handle: int) -> None: ...

    def close(self, handle: int) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def unlink(self, path: str) -> None: ...

    def fsync_dir(self, directory: str) -> None: ...


class OsDisk:
    """The real file system (see module docstring)."""

    def durability_mode(self, directory: str, *, allow_direct: bool) -> str:
        return durability_mode(directory, allow_direct=allow_direct)

    def lock_dir(self, directory: str) -> int:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def listdir(self, directory: str) -> list[str]:
        return os.listdir(directory)

    def open_write(self, path: str, *, direct: bool, create: bool = False) -> int:
        if create:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        return os.open(path, os.O_RDWR | (os.O_DIRECT if direct else 0))

    def open_read(self, path: str) -> int:
        return os.open(path, os.O_RDONLY)

    def size(self, handle: int) -> int:
        return os.fstat(handle).st_size

    def pwrite(self, handle: int, data: memoryview | bytes, pos: int) -> int:
        return os.pwrite(handle, data, pos)

    def pread(self, handle: int, size: int, pos: int) -> bytes:
        return os.pread(handle, size, pos)

    def read_all(self, handle: int) -> AbstractContextManager[memoryview]:
        return _mapped(handle)

    def allocate(self, handle: int, size: int) -> None:
        os.posix_fallocate(handle, 0, size)

    def fdatasync(self, handle: int) -> None:
        os.fdatasync(handle)

    def fsync(self, handle: int) -> None:
        os.fsync(handle)

    def close(self, handle: int) -> None:
        os.close(handle)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, directory: str) -> None:
        fsync_dir(directory)


@contextmanager
def _mapped(fd: int) -> Iterator[memoryview]:
    with mmap.mmap(fd, os.fstat(fd).st_size, access=mmap.ACCESS_READ) as mm:
        mm.madvise(mmap.MADV_SEQUENTIAL)  # read front to back: aggressive read-ahead
        view = memoryview(mm)
        try:
            yield view
        finally:
            view.release()
