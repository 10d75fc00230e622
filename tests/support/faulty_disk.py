"""FaultyDisk: an in-memory file system with power loss and disk faults, for the journal's
deterministic simulation (TESTING.md §2; fault table rows 2, 3, 5, 8, 9).

It implements `streamvault.dataplane.log.disk.Disk`. Every random choice comes from one
`random.Random(seed)`, so a run is a pure function of its seed and replays exactly.

Model (what it owns and the invariants it keeps):
- A file (inode) has `durable` bytes (what survives a crash) and `data` (what reads see,
  the page cache). A `pwrite` or `allocate` changes `data` only and marks the touched 4 KiB
  pages dirty; `fdatasync` / `fsync` copy the dirty pages (and the size) to `durable`.
- A directory has durable names and pending operations (create, rename, unlink) since its
  last `fsync_dir`; the current names are the durable ones with the pending ops applied.
- `crash()` is a power cut: per pending directory op, in order, keep or drop (a dropped op
  drops every later one of that directory); per dirty page of each file one of keep, drop,
  garble (random bytes) or tear (only a prefix of its 512 B sectors lands); the size
  becomes the durable or the current one. Then `data` = `durable`, every open handle and
  lock is gone (a stale handle's `close` is a no-op, anything else raises SimulatedCrash).
- Faults on demand: `fail_next(op, errno)` (the next call of `op` raises OSError; a failed
  pwrite may have landed partly, a failed sync may have lost dirty pages, as Linux does);
  `misdirect_next_write(delta)` (the next pwrite lands `delta` bytes away, or nowhere if
  that is outside the file: a silently lost write); `flip_bit(path)` (in durable data);
  `crash_after(n)` (the n-th disk call from now raises SimulatedCrash instead of running,
  and so does every later one until `crash()`: a power cut in the middle of anything).
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

PAGE_BYTES = 4096
SECTOR_BYTES = 512
SYNC_OPS = ("pwrite", "fdatasync", "fsync", "allocate", "fsync_dir", "rename", "unlink")
"""Operations `fail_next` can fail."""


class SimulatedCrash(BaseException):  # not an error of the code under test
    """The simulated machine lost power; the code under test must not catch it (it is no
    OSError), the simulation calls `FaultyDisk.crash()` and reopens."""


@dataclass(slots=True)
class _Inode:
    durable: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)
    dirty: set[int] = field(default_factory=set)  # page indices written since the last sync


@dataclass(slots=True)
class _Dir:
    durable: dict[str, _Inode] = field(default_factory=dict)
    names: dict[str, _Inode] = field(default_factory=dict)
    pending: list[tuple[str, str, str, _Inode | None]] = field(default_factory=list)


@dataclass(slots=True)
class _Handle:
    inode: _Inode | None  # None: a directory lock
    directory: str
    writable: bool


class FaultyDisk:
    """A simulated disk (see module docstring)."""

    def __init__(self, seed: int | str) -> None:
        self.rng = random.Random(seed)
        self._dirs: dict[str, _Dir] = {}
        self._handles: dict[int, _Handle] = {}
        self._locks: set[str] = set()
        self._next_handle = 3
        self._fail: dict[str, int] = {}
        self._misdirect: int | None = None
        self._crash_in: int | None = None
        self.dead = False
        self.counters: dict[str, int] = dict.fromkeys(
            (
                *("ops", "crashes", "pages_kept", "pages_dropped", "pages_garbled"),
                *("pages_torn", "dir_ops_kept", "dir_ops_dropped", "faults_fired"),
                *("writes_misdirected", "writes_lost", "bits_flipped"),
            ),
            0,
        )

    # --- fault control ---------------------------------------------------------------
    def fail_next(self, op: str, err: int) -> None:
        assert op in SYNC_OPS, op
        self._fail[op] = err

    def misdirect_next_write(self, offset_delta: int) -> None:
        self._misdirect = offset_delta

    def crash_after(self, calls: int) -> None:
        assert calls >= 1, calls
        self._crash_in = calls

    def clear_faults(self) -> list[str]:
        """Disarm every armed fault; return the ones that had not fired."""
        armed = [*self._fail, *(["misdirect"] if self._misdirect is not None else [])]
        armed += ["crash_after"] if self._crash_in is not None else []
        self._fail.clear()
        self._misdirect = self._crash_in = None
        return armed

    def armed(self) -> bool:
        return bool(self._fail) or self._misdirect is not None or self._crash_in is not None

    def flip_bit(self, path: str) -> int | None:
        """Flip one bit of the durable data of `path` (a non-zero byte if one is found
        quickly); return its position, None if the file is empty."""
        inode = self._lookup(path)
        size = len(inode.durable)
        if not size:
            return None
        pos = self.rng.randrange(size)
        for _ in range(64):
            if inode.durable[pos]:
                break
            pos = self.rng.randrange(size)
        mask = 1 << self.rng.randrange(8)
        inode.durable[pos] ^= mask
        if pos // PAGE_BYTES not in inode.dirty and pos < len(inode.data):
            inode.data[pos] = inode.durable[pos]  # a clean page re-read from the media
        self.counters["bits_flipped"] += 1
        return pos

    def crash(self) -> None:
        """Power loss (see module docstring); the disk is usable again afterwards."""
        rng, counters = self.rng, self.counters
        counters["crashes"] += 1
        for directory in self._dirs.values():
            for op, a, b, inode in directory.pending:
                if rng.random() < 0.35:
                    counters["dir_ops_dropped"] += 1
                    break
                counters["dir_ops_kept"] += 1
                _apply_dir_op(directory.durable, op, a, b, inode)
            directory.pending.clear()
            directory.names = dict(directory.durable)
        for inode in self._all_inodes():
            self._crash_inode(inode)
        self._handles.clear()
        self._locks.clear()
        self._fail.clear()
        self._misdirect = self._crash_in = None
        self.dead = False

    def _crash_inode(self, inode: _Inode) -> None:
        rng, counters = self.rng, self.counters
        old, new = len(inode.durable), len(inode.data)
        size = new if new == old or rng.random() < 0.5 else old
        result = inode.durable[:size]
        result.extend(bytes(size - len(result)))
        for page in sorted(inode.dirty):
            lo = page * PAGE_BYTES
            hi = min(lo + PAGE_BYTES, size)
            if lo >= hi:
                continue
            roll = rng.random()
            if roll < 0.4:
                counters["pages_kept"] += 1
                result[lo:hi] = inode.data[lo:hi]
            elif roll < 0.7:
                counters["pages_dropped"] += 1
            elif roll < 0.9:
                counters["pages_torn"] += 1
                cut = min(lo + SECTOR_BYTES * rng.randint(1, PAGE_BYTES // SECTOR_BYTES - 1), hi)
                result[lo:cut] = inode.data[lo:cut]
            else:
                counters["pages_garbled"] += 1
                result[lo:hi] = rng.randbytes(hi - lo)
        inode.durable = result
        inode.data = bytearray(result)
        inode.dirty.clear()

    def _all_inodes(self) -> Iterator[_Inode]:
        seen: set[int] = set()
        for directory in self._dirs.values():
            for inode in (*directory.durable.values(), *directory.names.values()):
                if id(inode) not in seen:
                    seen.add(id(inode))
                    yield inode

    # --- inspection (for tests; not part of Disk) --------------------------------------
    def exists(self, path: str) -> bool:
        head, name = os.path.split(path)
        return name in self._dirs.get(head, _Dir()).names

    def names(self, directory: str) -> list[str]:
        return sorted(self._dirs.get(directory, _Dir()).names)

    def durable_bytes(self, path: str) -> bytes:
        return bytes(self._lookup(path).durable)

    # --- Disk ------------------------------------------------------------------------
    def _call(self, op: str) -> None:
        """Every Disk call starts here: a pending power cut, then an injected failure."""
        if self.dead:
            raise SimulatedCrash(op)
        self.counters["ops"] += 1
        if self._crash_in is not None:
            self._crash_in -= 1
            if self._crash_in <= 0:
                self._crash_in = None
                self.dead = True
                raise SimulatedCrash(op)

    def _failure(self, op: str) -> int | None:
        err = self._fail.pop(op, None)
        if err is not None:
            self.counters["faults_fired"] += 1
        return err

    def durability_mode(self, directory: str, *, allow_direct: bool) -> str:
        return "simulated"

    def lock_dir(self, directory: str) -> int:
        self._call("lock_dir")
        self._dirs.setdefault(directory, _Dir())  # directories themselves are always durable
        if directory in self._locks:
            raise BlockingIOError(errno.EWOULDBLOCK, f"{directory} is locked")
        self._locks.add(directory)
        return self._new_handle(_Handle(None, directory, False))

    def listdir(self, directory: str) -> list[str]:
        self._call("listdir")
        names = list(self._dir(directory).names)
        self.rng.shuffle(names)
        return names

    def open_write(self, path: str, *, direct: bool, create: bool = False) -> int:
        self._call("open_write")
        head, name = os.path.split(path)
        directory = self._dir(head)
        if create:
            if name in directory.names:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            inode = directory.names[name] = _Inode()
            directory.pending.append(("create", name, "", inode))
        else:
            inode = self._lookup(path)
        return self._new_handle(_Handle(inode, head, True))

    def open_read(self, path: str) -> int:
        self._call("open_read")
        return self._new_handle(_Handle(self._lookup(path), os.path.dirname(path), False))

    def size(self, handle: int) -> int:
        self._call("size")
        return len(self._inode(handle).data)

    def pwrite(self, handle: int, data: memoryview | bytes, pos: int) -> int:
        self._call("pwrite")
        inode = self._inode(handle, write=True)
        length = len(data)
        err = self._failure("pwrite")
        if err is not None:
            if err != errno.ENOSPC and length:  # an I/O error: some sectors may have landed
                landed = self.rng.randrange(0, length, SECTOR_BYTES)
                self._write(inode, memoryview(data)[:landed], pos)
            raise OSError(err, f"{os.strerror(err)} (injected pwrite)")
        if self._misdirect is not None:
            target, self._misdirect = pos + self._misdirect, None
            if target >= 0 and target + length <= len(inode.data):
                self.counters["writes_misdirected"] += 1
                self._write(inode, data, target)
            else:
                self.counters["writes_lost"] += 1
            return length
        self._write(inode, data, pos)
        return length

    @staticmethod
    def _write(inode: _Inode, data: memoryview | bytes, pos: int) -> None:
        length = len(data)
        if not length:
            return
        if pos > len(inode.data):
            inode.data.extend(bytes(pos - len(inode.data)))
        inode.data[pos : pos + length] = data
        inode.dirty.update(range(pos // PAGE_BYTES, (pos + length - 1) // PAGE_BYTES + 1))

    def pread(self, handle: int, size: int, pos: int) -> bytes:
        self._call("pread")
        return bytes(self._inode(handle).data[pos : pos + size])

    def read_all(self, handle: int) -> AbstractContextManager[memoryview]:
        self._call("read_all")
        return _viewed(bytes(self._inode(handle).data))

    def allocate(self, handle: int, size: int) -> None:
        self._call("allocate")
        inode = self._inode(handle, write=True)
        err = self._failure("allocate")
        if err is not None:
            raise OSError(err, f"{os.strerror(err)} (injected allocate)")
        if size > len(inode.data):
            old = len(inode.data)
            inode.data.extend(bytes(size - old))
            inode.dirty.update(range(old // PAGE_BYTES, (size - 1) // PAGE_BYTES + 1))

    def fdatasync(self, handle: int) -> None:
        self._call("fdatasync")
        self._sync(self._inode(handle), "fdatasync")

    def fsync(self, handle: int) -> None:
        self._call("fsync")
        self._sync(self._inode(handle), "fsync")

    def _sync(self, inode: _Inode, op: str) -> None:
        err = self._failure(op)
        if err is not None:  # like Linux after a failed writeback: some pages marked clean
            inode.dirty = {page for page in sorted(inode.dirty) if self.rng.random() < 0.5}
            raise OSError(err, f"{os.strerror(err)} (injected {op})")
        size = len(inode.data)
        del inode.durable[size:]
        inode.durable.extend(bytes(size - len(inode.durable)))
        for page in inode.dirty:
            lo = page * PAGE_BYTES
            inode.durable[lo : lo + PAGE_BYTES] = inode.data[lo : lo + PAGE_BYTES]
        inode.dirty.clear()

    def close(self, handle: int) -> None:
        if self.dead:
            return
        entry = self._handles.pop(handle, None)
        if entry is not None and entry.inode is None:
            self._locks.discard(entry.directory)

    def rename(self, src: str, dst: str) -> None:
        self._call("rename")
        err = self._failure("rename")
        if err is not None:
            raise OSError(err, f"{os.strerror(err)} (injected rename)")
        (head, a), (head_b, b) = os.path.split(src), os.path.split(dst)
        assert head == head_b, (src, dst)
        directory = self._dir(head)
        if a not in directory.names:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
        _apply_dir_op(directory.names, "rename", a, b, None)
        directory.pending.append(("rename", a, b, None))

    def unlink(self, path: str) -> None:
        self._call("unlink")
        err = self._failure("unlink")
        if err is not None:
            raise OSError(err, f"{os.strerror(err)} (injected unlink)")
        head, name = os.path.split(path)
        directory = self._dir(head)
        if name not in directory.names:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        _apply_dir_op(directory.names, "unlink", name, "", None)
        directory.pending.append(("unlink", name, "", None))

    def fsync_dir(self, directory: str) -> None:
        self._call("fsync_dir")
        err = self._failure("fsync_dir")
        if err is not None:
            raise OSError(err, f"{os.strerror(err)} (injected fsync_dir)")
        entry = self._dir(directory)
        entry.durable = dict(entry.names)
        entry.pending.clear()

    # --- helpers ---------------------------------------------------------------------
    def _new_handle(self, handle: _Handle) -> int:
        number = self._next_handle
        self._next_handle += 1
        self._handles[number] = handle
        return number

    def _dir(self, directory: str) -> _Dir:
        entry = self._dirs.get(directory)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), directory)
        return entry

    def _lookup(self, path: str) -> _Inode:
        head, name = os.path.split(path)
        inode = self._dir(head).names.get(name)
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return inode

    def _inode(self, handle: int, *, write: bool = False) -> _Inode:
        entry = self._handles.get(handle)
        if entry is None or entry.inode is None or (write and not entry.writable):
            raise OSError(errno.EBADF, f"bad handle {handle}")
        return entry.inode


def _apply_dir_op(names: dict[str, _Inode], op: str, a: str, b: str, inode: _Inode | None) -> None:
    if op == "create":
        assert inode is not None
        names[a] = inode
    elif op == "rename":
        names[b] = names.pop(a)
    else:
        del names[a]


@contextmanager
def _viewed(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    try:
        yield view
    finally:
        view.release()
