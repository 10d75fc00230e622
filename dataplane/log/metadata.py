"""Durable-log metadata and the coordination store it lives in.

A container's log metadata (epoch, ledger list with each ledger's state and last entry) is
changed only by versioned compare-and-set. Standalone uses `LocalFileStore`: one JSON file
per key, replaced atomically (write temp, fsync, rename, fsync directory) under an exclusive
`flock`, so a stale writer's CAS fails instead of overwriting. Cluster mode (a later issue)
puts the same records in ZooKeeper.
"""

from __future__ import annotations

import fcntl
import os
from typing import Protocol

import msgspec

from streamvault.client.protocol.errors import Fenced, StorageError

LEDGER_ID_SHIFT = 32
"""Ledger ids are `container_id << LEDGER_ID_SHIFT | n` (n >= 1): unique across containers."""


class LedgerInfo(msgspec.Struct):
    ledger_id: int
    state: str  # "open" | "closed"
    last_entry_id: int = -1
    ensemble: list[str] = []
    """Bookie ids holding the ledger (replicated logs; empty for local ledger files)."""
    instances: list[str] = []
    """The instance of each ensemble bookie when the ledger was made ("" unknown: it did
    not answer); recovery counts a bookie's "not found" only from that instance."""


class LogMetadata(msgspec.Struct):
    epoch: int = 0
    next_ledger_id: int = 1
    ledgers: list[LedgerInfo] = []


class _Versioned(msgspec.Struct):
    version: int
    value: LogMetadata


class BadVersion(Fenced):
    """A compare-and-set saw another version: someone else changed the record."""


class CoordinationStore(Protocol):
    def get(self, key: str) -> tuple[LogMetadata | None, int]: ...

    def cas(self, key: str, value: LogMetadata, expected_version: int) -> int: ...


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFileStore:
    """Versioned records as files under `root` (standalone coordination store)."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(_Versioned)

    def _path(self, key: str) -> str:
        assert "/" not in key and key, key
        return os.path.join(self.root, f"{key}.json")

    def get(self, key: str) -> tuple[LogMetadata | None, int]:
        try:
            with open(self._path(key), "rb") as f:
                record = self._decoder.decode(f.read())
        except FileNotFoundError:
            return None, 0
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StorageError(f"coordination get: {self._path(key)} is unreadable: {exc}") from exc
        return record.value, record.version

    def cas(self, key: str, value: LogMetadata, expected_version: int) -> int:
        lock_fd = os.open(os.path.join(self.root, f".{key}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            _, version = self.get(key)
            if version != expected_version:
                raise BadVersion(
                    f"coordination cas {key}: version {version} != expected {expected_version}",
                    key=key,
                )
            path = self._path(key)
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._encoder.encode(_Versioned(version + 1, value)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self.root)
            return version + 1
        finally:
            os.close(lock_fd)
