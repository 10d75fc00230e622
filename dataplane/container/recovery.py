"""Recovering a container from its durable log, starting at its last checkpoint.

Pass 1 reads the log's records without changing anything and finds the last CHECKPOINT
operation, from the end of the log back (`scan_back`: runs of records, newest first), so it
stops at the newest run holding one instead of reading the whole log. Pass 2 fences the log
(`DurableLog.recover`), loads that checkpoint, re-caches from the records it covers only the
bytes not yet in LTS, and replays every later record in full. Without a checkpoint, every
record is replayed in full.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from streamvault.dataplane.container import operations as ops
from streamvault.dataplane.container.container import Container
from streamvault.dataplane.log import LocalDurableLog


class Recovered(NamedTuple):
    records: int
    covered: tuple[int, int] | None  # the loaded checkpoint's covered position
    scan_s: float  # pass 1
    replay_s: float  # pass 2


def recover(container: Container, log: LocalDurableLog) -> Recovered:
    snapshot: bytes | None = None
    covered: tuple[int, int] | None = None
    started = time.monotonic()
    runs = log.scan_back()
    try:
        for run in runs:  # newest first: the first run holding a checkpoint has the last
            for payload in run:
                for op in ops.iter_ops(payload):
                    if op.kind == ops.OP_CHECKPOINT:
                        snapshot, covered = op.name, (op.offset, op.data_pos)
            if snapshot is not None:
                break
    finally:
        runs.close()
    if snapshot is not None:
        container.load_checkpoint(snapshot)
    scanned = time.monotonic()
    records = 0
    for location, payload in log.recover():
        records += 1
        if covered is not None and (location.ledger_id, location.entry_id) <= covered:
            container.replay_data(payload, location.ledger_id, location.record_pos)
        else:
            container.replay(payload, location.ledger_id, location.record_pos)
        container.last_committed = (location.ledger_id, location.entry_id)
    return Recovered(records, covered, scanned - started, time.monotonic() - scanned)
