"""The registry routes each container to one live worker: after a failover, to the claimant
that recovered last (highest log epoch), so a paused owner that resumes and heartbeats
again (a zombie, about to fail as fenced) never takes the route back; standbys and
silent workers are never routed to."""

from __future__ import annotations

import time

from streamvault.client.protocol import messages as m
from streamvault.controlplane.registry import Registry


def _worker(wid: str, state: str, epochs: object, containers=(0, 1)) -> m.Heartbeat:
    return m.Heartbeat(
        role="worker",
        id=wid,
        pid=1,
        endpoint=f"tcp://127.0.0.1:{1000 + int(wid)}",
        state=state,
        containers=list(containers),
        info={"epochs": epochs},
    )


def test_the_claimant_with_the_highest_epoch_is_routed_to_whichever_beats_last():
    registry = Registry()
    registry.beat(_worker("1", "up", {"0": 2, "1": 2}))  # the new owner
    registry.beat(_worker("0", "up", {"0": 1, "1": 1}))  # the old one, resumed
    assert registry.container_endpoints() == {0: "tcp://127.0.0.1:1001", 1: "tcp://127.0.0.1:1001"}
    registry.beat(_worker("1", "up", {"0": 2, "1": 2}))
    registry.beat(_worker("0", "up", {"0": 1, "1": 1}))
    assert set(registry.container_endpoints().values()) == {"tcp://127.0.0.1:1001"}


def test_standbys_and_silent_workers_are_not_routed_to():
    registry = Registry(stale_after_s=0.05)
    registry.beat(_worker("1", "standby", {}))
    assert registry.container_endpoints() == {}
    registry.beat(_worker("0", "up", {"0": 1, "1": 1}))
    assert registry.container_endpoints() == {0: "tcp://127.0.0.1:1000", 1: "tcp://127.0.0.1:1000"}
    time.sleep(0.1)
    assert registry.container_endpoints() == {}
    assert {p.id: p.state for p in registry.processes()} == {
        "0": "unresponsive",
        "1": "unresponsive",
    }


def test_heartbeats_without_or_with_garbled_epochs_count_as_epoch_zero():
    registry = Registry()
    registry.beat(_worker("0", "up", "garbage", containers=(0,)))
    registry.beat(_worker("1", "up", {"0": "x"}, containers=(0,)))
    assert registry.container_endpoints() == {0: "tcp://127.0.0.1:1000"}  # first claimant
    registry.beat(_worker("2", "up", {"0": 3}, containers=(0,)))
    assert registry.container_endpoints() == {0: "tcp://127.0.0.1:1002"}
