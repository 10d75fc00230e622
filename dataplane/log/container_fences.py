"""Container fences: the lowest epoch a container's log writers may still use, as one bookie
knows it, kept for as long as the bookie lives (not as long as a ledger does).

A recovery fences the open ledgers of a container's log at its new epoch. The fence marker
of a ledger lives in the journal only until the ledger is deleted and its journal file
removed; an old owner that wakes up after that (a paused process) would find the ledger
unknown, and a bookie that accepted its adds would acknowledge writes nobody can see. So
the bookie also keeps, per container (ledger id >> LEDGER_ID_SHIFT), the highest epoch any
of its ledgers was fenced at, and refuses every add and fence below it with `Fenced`.

Storage: one small file `container-fences` in the journal directory, replaced atomically
(write `container-fences.tmp`, fsync, rename, fsync the directory) before the fences that
raised it are answered. Format: header (magic, entry count, CRC32C of the entries), then
(container u64, epoch u64) per container. It must never: lower an epoch, or answer a fence
before the raised epoch is durable (the caller persists first); a damaged file is
DataCorruption (fail-stop), never silently empty.
"""

from __future__ import annotations

import os
import struct

import crc32c

from streamvault.client.protocol.errors import DataCorruption, StorageError
from streamvault.dataplane.log.disk import Disk

FILE_NAME = "container-fences"
MAGIC = b"SVCF"
HEADER = struct.Struct("<4sII")
ENTRY = struct.Struct("<QQ")


class ContainerFences:
    def __init__(self, directory: str, disk: Disk) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self._disk = disk
        self._epochs: dict[int, int] = {}
        self._dirty = False
        self._load()

    def epoch(self, container: int) -> int:
        """The lowest epoch this container's writers may use here (0: no fence)."""
        return self._epochs.get(container, 0)

    def raise_to(self, container: int, epoch: int) -> None:
        """Raise the container's fence (in memory; `persist` makes it durable)."""
        if epoch > self._epochs.get(container, 0):
            self._epochs[container] = epoch
            self._dirty = True

    def persist(self) -> None:
        """Make raised fences durable; an I/O error is StorageError (fail-stop)."""
        if not self._dirty:
            return
        body = b"".join(ENTRY.pack(c, e) for c, e in sorted(self._epochs.items()))
        data = HEADER.pack(MAGIC, len(self._epochs), crc32c.crc32c(body)) + body
        tmp = f"{self.path}.tmp"
        disk = self._disk
        try:
            if os.path.basename(tmp) in disk.listdir(self.directory):
                disk.unlink(tmp)
            fd = disk.open_write(tmp, direct=False, create=True)
            try:
                if disk.pwrite(fd, data, 0) != len(data):
                    raise OSError(f"short write to {tmp}")
                disk.fsync(fd)
            finally:
                disk.close(fd)
            disk.rename(tmp, self.path)
            disk.fsync_dir(self.directory)
        except OSError as exc:
            raise StorageError(f"container fences {self.path}: {exc}") from exc
        self._dirty = False

    def _load(self) -> None:
        disk = self._disk
        try:
            if FILE_NAME not in disk.listdir(self.directory):
                return
            fd = disk.open_read(self.path)
            try:
                data = disk.pread(fd, disk.size(fd), 0)
            finally:
                disk.close(fd)
        except OSError as exc:
            raise StorageError(f"container fences {self.path}: {exc}") from exc
        if len(data) < HEADER.size:
            raise DataCorruption(f"container fences {self.path}: {len(data)} bytes", path=self.path)
        magic, count, crc = HEADER.unpack_from(data, 0)
        body = data[HEADER.size : HEADER.size + count * ENTRY.size]
        if magic != MAGIC or len(body) != count * ENTRY.size or crc32c.crc32c(body) != crc:
            raise DataCorruption(f"container fences {self.path}: fails its check", path=self.path)
        for i in range(count):
            container, epoch = ENTRY.unpack_from(body, i * ENTRY.size)
            self._epochs[container] = epoch
