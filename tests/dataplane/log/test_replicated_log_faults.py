"""The replicated log through fault proxies in front of three real bookies (TESTING.md rows 11
and 14): a partition of one bookie stops nothing; a partition of two stops acks until it
heals; lost acks and connection resets are repaired by resends; in every case recovery
finds each acknowledged record exactly once, in order, and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.bookies import running_bookies
from support.fault_proxy import FaultProxy
from support.replicated import Owner, recovered, replication

from streamvault.dataplane.log import LocalFileStore


@pytest.fixture
def cluster(tmp_path: Path):
    with running_bookies(tmp_path) as bookies:
        proxies = [FaultProxy(bookie.port) for bookie in bookies]
        try:
            yield bookies, proxies
        finally:
            for proxy in proxies:
                proxy.close()


@pytest.fixture
def store(tmp_path: Path) -> LocalFileStore:
    return LocalFileStore(str(tmp_path / "coordination"))


def test_partitions_stop_acks_only_below_the_ack_quorum(cluster, store):
    bookies, proxies = cluster
    owner = Owner.running(store, replication([p.endpoint for p in proxies]))
    records = [os.urandom(300) for _ in range(12)]
    try:
        for record in records[:4]:
            owner.write(record)
        proxies[0].set_mode("blackhole")  # one partitioned: Qa = 2 still reachable
        for record in records[4:8]:
            owner.write(record)
        proxies[1].set_mode("blackhole")  # two partitioned: nothing may be acknowledged
        owner.submit(records[8])
        assert owner.completed(timeout_s=2.0) is None, "acknowledged with one reachable copy"
        proxies[0].set_mode("pass")  # heals: the resend reaches a quorum
        item = owner.completed()
        assert item is not None and item[2] == records[8] and not owner.fatal
        proxies[1].set_mode("pass")
        for record in records[9:]:
            owner.write(record)
    finally:
        owner.close()
    assert recovered(store, replication([b.endpoint for b in bookies])) == records


def test_lost_acks_and_resets_are_repaired_by_resends_without_duplicates(cluster, store):
    bookies, proxies = cluster
    owner = Owner.running(store, replication([p.endpoint for p in proxies]))
    records = [os.urandom(500) for _ in range(10)]
    try:
        for record in records[:3]:
            owner.write(record)
        for proxy in proxies:
            proxy.set_mode("drop_replies")  # stored, but nobody hears the acks
        owner.submit(records[3])
        assert owner.completed(timeout_s=1.5) is None
        for proxy in proxies:
            proxy.set_mode("reset")  # connections die; the client reconnects
        for proxy in proxies:
            proxy.set_mode("pass")
        item = owner.completed()
        assert item is not None and item[2] == records[3] and not owner.fatal
        assert owner.replicator.counters["resends"] > 0
        for record in records[4:]:
            owner.write(record)
    finally:
        owner.close()
    assert recovered(store, replication([b.endpoint for b in bookies])) == records
