"""A standby worker: it holds its containers' configuration but opens none of them until
their owner is gone.

`wait_for_takeover` runs before the worker opens its containers. It heartbeats the
controller as state `standby` (listed by `status`, never routed to) and asks for the
container map every `poll_s`. Once it has seen its containers served, it takes them over
when none of them has been served by a live worker for `grace_s`: the controller's registry
stops routing to a worker it has not heard from for its `stale_after_s` (3 s), and the grace
rides out a controller restart (an empty registry until the next heartbeats, 1 s).

Safety does not rest on this decision. Taking over is a recovery: the epoch moves on by
compare-and-set and the previous owner's open ledgers are fenced on the bookies, so an owner
that was only paused (SIGSTOP, a long GC, a partition) fails as fenced at its first write
afterwards and stops; a wrong takeover costs availability, never data.

It must never take over a container that is still served, or before it has seen the
containers served (a standby started before its owner would race the owner's recovery).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.codec import next_request_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StandbyConfig:
    worker_id: int
    containers: tuple[int, ...]
    controller: str
    poll_s: float = 0.5
    grace_s: float = 2.0
    """How long none of the containers must stay unserved before the takeover."""
    request_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.controller:
            raise ValueError("standby: a controller is needed to see the owner go")
        if not self.containers:
            raise ValueError("standby: no containers to stand by for")
        if not 0 < self.poll_s <= self.grace_s:
            raise ValueError(f"standby: need 0 < poll_s={self.poll_s} <= grace_s={self.grace_s}")


def wait_for_takeover(
    ctx: zmq.Context,
    config: StandbyConfig,
    stopping: Callable[[], bool],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Block until the containers are to be taken over (True) or `stopping()` (False)."""
    heartbeat = transport.HeartbeatSender(ctx, config.controller)
    sock = transport.client_socket(ctx, config.controller)
    seen_served = False
    unserved_since: float | None = None
    try:
        while not stopping():
            heartbeat.beat(
                m.Heartbeat(
                    role="worker",
                    id=str(config.worker_id),
                    pid=os.getpid(),
                    endpoint="",
                    state="standby",
                    containers=list(config.containers),
                )
            )
            heartbeat.drain()
            endpoints = _container_map(sock, config.request_timeout_s)
            now = clock()
            if endpoints is None:  # no answer: tell nothing from a silent controller
                sock.close(0)
                sock = transport.client_socket(ctx, config.controller)
                unserved_since = None
            elif any(c in endpoints for c in config.containers):
                seen_served, unserved_since = True, None
            elif seen_served:
                unserved_since = now if unserved_since is None else unserved_since
                if now - unserved_since >= config.grace_s:
                    log.warning(
                        "worker=%d standby: containers %s unserved for %.1fs: taking over",
                        config.worker_id,
                        list(config.containers),
                        now - unserved_since,
                    )
                    return True
            time.sleep(config.poll_s)
        return False
    finally:
        sock.close(0)
        heartbeat.close()


def _container_map(sock: zmq.Socket, timeout_s: float) -> dict[int, str] | None:
    """The controller's container -> endpoint map, or None without an answer in time."""
    rid = next_request_id()
    sock.send_multipart(codec.encode(m.GetContainerMap(), rid), zmq.NOBLOCK)
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
            return None
        for header, body in transport.replies(sock):
            if header.request_id == rid and isinstance(body, m.ContainerMap):
                return body.endpoints
    return None
