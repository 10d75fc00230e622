"""The bookie's instance: which lifetime of its data directory answers for a bookie id.

A bookie id names a machine slot in the configuration; the data behind it can be lost
(a replaced or wiped disk) while the id stays. A bookie that comes back empty under its
old id must not be taken as evidence that an entry was never acknowledged: recovery
decides that an entry is absent from "not found" answers of enough bookies, and an empty
bookie would answer "not found" for entries it held and lost (the quorum simulation's
`wipe` fault shows the loss). So each data directory gets a random instance id the first
time a bookie opens it, kept in `<data-dir>/instance` (written to a temp file, fsync'd,
renamed, directory fsync'd; with a CRC32C). The bookie reports it in its `Hello` reply;
ledger metadata records the instance of each ensemble bookie when the ledger is made, and
recovery counts a bookie's "not found" only while it is still that instance
(replicated_log.py).

Invariants:
- The instance is durable before the bookie serves anything; it never changes while the
  file exists. A missing file means a new instance (an empty data dir, or one whose
  instance was lost: that bookie then only stops vouching for older ledgers).
- A damaged file is DataCorruption: the bookie does not start (it cannot tell who it is).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable

import crc32c

from streamvault.client.protocol.errors import DataCorruption
from streamvault.dataplane.log.metadata import fsync_dir

INSTANCE_FILE = "instance"


def _encode(instance: str) -> bytes:
    return f"{instance} {crc32c.crc32c(instance.encode()):08x}\n".encode()


def load_or_create(data_dir: str) -> str:
    """The instance of `data_dir`, made (durably) if it has none yet."""
    path = os.path.join(data_dir, INSTANCE_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read(256)
    except FileNotFoundError:
        return _create(data_dir, path)
    parts = data.decode("ascii", "replace").split()
    if len(parts) != 2 or _encode(parts[0]) != data:
        raise DataCorruption(f"bookie instance file {path} is damaged: {data[:80]!r}")
    return parts[0]


def _create(data_dir: str, path: str) -> str:
    instance = secrets.token_hex(16)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, _encode(instance))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(data_dir)
    return instance


class InstanceRound:
    """One worker's latest answer to "which instance is each bookie" (endpoint -> instance;
    absent: no answer), shared by its logs while they recover one after another, so that a
    bookie that does not answer costs the round's timeout once per worker instead of once
    per container. Taken instead of asking again while younger than `max_age_s` and for the
    same endpoints. That is as safe as asking: every log asks its witnesses again after its
    reads and decides again from the start if one changed (replicated_log.py)."""

    def __init__(self, max_age_s: float, clock: Callable[[], float]) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._key: tuple[str, ...] = ()
        self._seen: dict[str, str] = {}
        self._at = 0.0

    def get(self, endpoints: list[str]) -> dict[str, str] | None:
        with self._lock:
            fresh = self._clock() - self._at < self.max_age_s
            if self._key == tuple(endpoints) and fresh:
                return dict(self._seen)
            return None

    def put(self, endpoints: list[str], seen: dict[str, str]) -> None:
        with self._lock:
            self._key, self._seen, self._at = tuple(endpoints), dict(seen), self._clock()
