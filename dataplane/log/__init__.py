"""The durable log: framing, ledgers, log metadata, the group-commit committer.

Interface used by containers (implemented by `LocalDurableLog` on local ledger files and by
`ReplicatedLog` on bookies; `Committer` and `Replicator` are the matching write threads):

    recover() -> iterator of (LogLocation, payload view)   # fence, then replay
    start()                                                # open a new ledger
    acquire_buffer(payload_bytes) -> WriteBuffer | None    # None: in-flight limit reached
    submit(buffer, payload_bytes, token)                   # completion comes back in order
    release(buffer)                                        # after the completion
    read(ledger_id, position, length) -> bytes
    holds_records() -> bool                                # any ledger holds a record
    roll_over()                                            # the next record: a new ledger

Reading order: framing → ledger → metadata → local_log → probe; then journal_format →
journal → bookie → bookie_client → replicated_log → replicator.
"""

from streamvault.dataplane.log.local_log import (
    Committer,
    LocalDurableLog,
    LogConfig,
    LogLocation,
    WriteBuffer,
)
from streamvault.dataplane.log.metadata import LocalFileStore
from streamvault.dataplane.log.probe import durability_mode

__all__ = [
    "Committer",
    "LocalDurableLog",
    "LocalFileStore",
    "LogConfig",
    "LogLocation",
    "WriteBuffer",
    "durability_mode",
]
