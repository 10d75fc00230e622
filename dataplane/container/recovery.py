"""Recovering a container from its durable log, starting at its last checkpoint.

Pass 1 reads the log's records without changing anything and finds the last CHECKPOINT
operation. Pass 2 fences the log (`DurableLog.recover`), loads that checkpoint, re-caches
from the records it covers only the bytes not yet in LTS, and replays every later record in
full. Without a checkpoint, every record is replayed in full.
"""

from __future__ import annotations

from typing import NamedTuple

from streamvault.dataplane.container import operations as ops
from streamvault.dataplane.container.container import Container
from streamvault.dataplane.log import LocalDurableLog


class Recovered(NamedTuple):
    records: int
    covered: tuple[int, int] | None  # the loaded checkpoint's covered position


def recover(container: Container, log: LocalDurableLog) -> Recovered:
    snapshot: bytes | None = None
    covered: tuple[int, int] | None = None
    for _, payload in log.scan():
        for op in ops.iter_ops(payload):
            if op.kind == ops.OP_CHECKPOINT:
                snapshot, covered = op.name, (op.offset, op.data_pos)
    if snapshot is not None:
        container.load_checkpoint(snapshot)
    records = 0
    for location, payload in log.recover():
        records += 1
        if covered is not None and (location.ledger_id, location.entry_id) <= covered:
            container.replay_data(payload, location.ledger_id, location.record_pos)
        else:
            container.replay(payload, location.ledger_id, location.record_pos)
        container.last_committed = (location.ledger_id, location.entry_id)
    return Recovered(records, covered)
