"""Harness for replicated-log tests: one container's ReplicatedLog and its Replicator, driven
the way a worker drives them (submit records, collect completions, release buffers)."""

from __future__ import annotations

import queue

import zmq

from streamvault.dataplane.log import LocalFileStore, LogConfig
from streamvault.dataplane.log.replicated_log import ReplicatedLog, ReplicationConfig
from streamvault.dataplane.log.replicator import Replicator

WAIT_S = 20.0
KEY = "container-0001"


def replication(endpoints: list[str], **kw) -> ReplicationConfig:
    return ReplicationConfig(
        bookies={str(i): endpoint for i, endpoint in enumerate(endpoints)},
        ensemble=3,
        write_quorum=3,
        ack_quorum=2,
        add_timeout_s=0.3,
        recovery_timeout_s=3.0,
        **kw,
    )


class Owner:
    """One container's log and its replicator, as a worker holds them."""

    def __init__(self, store: LocalFileStore, rep: ReplicationConfig, **log_config) -> None:
        self.ctx = zmq.Context()
        self.done: queue.Queue = queue.Queue()
        self.fatal: list[BaseException] = []
        self.replicator = Replicator(
            self.ctx,
            rep,
            deliver=lambda items: [self.done.put(i) for i in items],
            fatal=self.fatal.append,
        )
        self.log = ReplicatedLog(
            key=KEY,
            container_id=1,
            store=store,
            replicator=self.replicator,
            replication=rep,
            ctx=self.ctx,
            config=LogConfig(**log_config),
        )

    @classmethod
    def running(cls, store: LocalFileStore, rep: ReplicationConfig, **log_config) -> Owner:
        """An owner that has recovered the log (whatever it held) and started writing."""
        owner = cls(store, rep, **log_config)
        owner.recover()
        return owner.start()

    def recover(self) -> list[bytes]:
        return [bytes(payload) for _, payload in self.log.recover()]

    def start(self) -> Owner:
        self.log.start()
        self.replicator.start()
        return self

    def submit(self, payload: bytes) -> None:
        buffer = self.log.acquire_buffer(len(payload))
        assert buffer is not None
        buffer.payload[: len(payload)] = payload
        self.log.submit(buffer, len(payload), payload)

    def completed(self, timeout_s: float = WAIT_S):
        """The next completion (log, buffer, token, location), or None on timeout."""
        try:
            item = self.done.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if item[1] is not None:
            self.log.release(item[1])
        return item

    def write(self, payload: bytes) -> None:
        self.submit(payload)
        item = self.completed()
        assert item is not None and item[2] == payload, f"not acknowledged: {self.fatal}"

    def close(self) -> None:
        self.replicator.stop()
        self.log.close()
        self.ctx.term()


def recovered(store: LocalFileStore, rep: ReplicationConfig) -> list[bytes]:
    """What a new owner of the log recovers (it fences the log, then closes)."""
    owner = Owner(store, rep)
    try:
        return owner.recover()
    finally:
        owner.close()
