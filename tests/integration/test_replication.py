"""A standalone with three bookies (`--replicas 3 --ack-quorum 2`), real processes throughout.

What it proves: status lists the bookies; SIGKILL of every process mid-write loses nothing
acknowledged and the same writer's resends are not duplicated (TESTING.md row 1 over the
replicated log); SIGKILL of one bookie mid-write stops nothing and loses nothing, and the
standalone restarts it (row 6); writing many times the cache size keeps the ledgers the
bookies hold bounded (truncation of the replicated log below what LTS holds, row 18).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.cluster import Standalone
from support.history import (
    check_exactly_once,
    event,
    expected_counts,
    read_all,
    unique,
    wait_acked,
    write_in_background,
)

from streamvault.client import StreamManager
from streamvault.client.protocol.naming import container_for, segment_name

KEYS = 32
REPLICATED = ["--replicas", "3", "--ack-quorum", "2"]
LEDGERS_MAX = 8
"""Ledgers a bookie may hold in the bounded-log test: without truncation 320 MB of 16 MiB
ledgers would be 20; with it, the cache (32 MiB) plus a checkpoint interval and the open
ledger of each container that has data (measured: at most 2)."""
JOURNAL_FILES_MAX = 6
"""Journal files (32 MiB) a bookie may have in use in the bounded-log test: the idle
container's checkpoint lets its ledger go (measured: 2 in use at the end), where before it
pinned all ~11 until compaction copied it forward (then at most 6)."""


def _running(tmp_path: Path, extra: list[str]):
    cluster = Standalone(tmp_path / "data", extra=extra).start()
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
def replicated(tmp_path: Path):
    yield from _running(tmp_path, REPLICATED)


@pytest.fixture
def replicated_tcp(tmp_path: Path):
    yield from _running(tmp_path, [*REPLICATED, "--bookie-transport", "tcp"])


def _bookies(mgr) -> dict[str, tuple[int, str]]:
    return {p.id: (p.pid, p.state) for p in mgr.status().processes if p.role == "bookie"}


def _endpoints(mgr) -> dict[str, str]:
    return {p.id: p.endpoint for p in mgr.status().processes if p.role == "bookie"}


def _wait_bookies_up(mgr, count: int, timeout_s: float = 30.0) -> dict[str, tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        bookies = _bookies(mgr)
        if len(bookies) == count and all(state == "up" for _, state in bookies.values()):
            return bookies
        time.sleep(0.2)
    raise AssertionError(f"bookies not up: {_bookies(mgr)}")


def test_sigkill_every_process_mid_write_then_restart_exactly_once(replicated):
    scope, stream, total = unique("s"), unique("t"), 60_000
    with StreamManager(replicated.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=4)
        bookies = _wait_bookies_up(mgr, 3)
        assert all(pid > 0 for pid, _ in bookies.values())
        endpoints = _endpoints(mgr)  # the default: abstract Unix sockets, one per bookie
        assert all(e.startswith("ipc://@streamvault-") for e in endpoints.values()), endpoints
        assert len(set(endpoints.values())) == 3
        workers = [p for p in mgr.status().processes if p.role == "worker"]
        assert all("replicated E=3 Qw=3 Qa=2" in w.info["durability_mode"] for w in workers)
        writer = mgr.create_writer(scope, stream)
        futures: list = []
        done = threading.Event()
        thread = write_in_background(writer, futures, total, done, keys=KEYS)
        wait_acked(futures, 15_000)
        assert not done.is_set(), "the writer finished before the crash: nothing was tested"
        replicated.kill()
        time.sleep(0.5)
        replicated.start()
        thread.join(timeout=120)
        assert done.is_set()
        writer.flush(timeout=120)
        assert all(f.done() and f.exception() is None for f in futures)
        writer.close()
        got = read_all(mgr, scope, stream, total=total)
        assert _endpoints(mgr) == endpoints  # named after the data dir: the same after restart
    check_exactly_once(got, expected_counts(total, KEYS))


def test_status_shows_where_a_replicated_append_spends_its_time(replicated):
    """Every bookie reports its turns and its journal's pwrite and fdatasync durations, and
    the worker with data its entries' quorum round trips (first send to the second ack)."""
    with StreamManager(replicated.controller) as mgr:
        mgr.create_scope("lat")
        mgr.create_stream("lat", "s", initial_segments=1)
        _wait_bookies_up(mgr, 3)
        with mgr.create_writer("lat", "s") as writer:
            for _ in range(20):
                writer.write_events([b"x" * 100] * 100).result(30)
        deadline = time.monotonic() + 10  # the next heartbeats carry it
        while True:
            processes = mgr.status().processes
            bookies = [p.info["latency_ms"] for p in processes if p.role == "bookie"]
            quorum = [p.info["latency_ms"]["quorum"] for p in processes if p.role == "worker"]
            done = len(bookies) == 3 and all(b["sync"]["count"] >= 20 for b in bookies)
            if (done and any(q["count"] >= 20 for q in quorum)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)

    def ok(s: dict) -> bool:
        return s["count"] >= 20 and 0 <= s["p50"] <= s["p95"] <= s["max"]

    assert len(bookies) == 3 and all(
        ok(b["turn"]) and ok(b["write"]) and ok(b["sync"]) for b in bookies
    ), bookies
    assert any(ok(q) for q in quorum), quorum


def test_one_bookie_killed_mid_write_loses_nothing_and_is_restarted(replicated_tcp):
    """Over loopback TCP (`--bookie-transport tcp`)."""
    scope, stream, total = unique("s"), unique("t"), 40_000
    with StreamManager(replicated_tcp.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=4)
        before = _wait_bookies_up(mgr, 3)
        assert all(e.startswith("tcp://127.0.0.1:") for e in _endpoints(mgr).values())
        with mgr.create_writer(scope, stream) as writer:
            futures: list = []
            done = threading.Event()
            thread = write_in_background(writer, futures, total, done, keys=KEYS)
            wait_acked(futures, 10_000)
            os.kill(before["1"][0], signal.SIGKILL)
            thread.join(timeout=120)
            writer.flush(timeout=120)
        assert all(f.exception() is None for f in futures)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = _bookies(mgr)
            if after.get("1", (0, ""))[0] not in (0, before["1"][0]):
                break
            time.sleep(0.2)
        assert after["1"][0] != before["1"][0], "the killed bookie was not restarted"
        assert after["0"][0] == before["0"][0] and after["2"][0] == before["2"][0]
        got = read_all(mgr, scope, stream, total=total)
    check_exactly_once(got, expected_counts(total, KEYS))


@pytest.mark.slow
def test_the_replicated_log_stays_bounded_while_writing_many_cache_sizes(tmp_path: Path):
    """Checkpoints and LTS let the containers truncate their logs; the bookies delete the
    truncated ledgers, so what they hold stays bounded however much is written. One other
    container got a single event and then nothing: once that event is in LTS it checkpoints
    into a new ledger and its first one goes, so it does not pin every journal file."""
    cluster = Standalone(
        tmp_path / "data",
        extra=[*REPLICATED, "--ledger-size", "16M", "--flush-wait", "1", "--containers", "4"],
        cache_size="32M",
    ).start()
    try:
        scope, stream = unique("s"), unique("t")
        busy = container_for(segment_name(scope, stream, 0), 4)
        idle = next(
            name
            for name in (f"idle{i}" for i in range(100))
            if container_for(segment_name(scope, name, 0), 4) != busy
        )
        payload = [os.urandom(1000) for _ in range(1000)]
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            mgr.create_stream(scope, idle, initial_segments=1)
            with mgr.create_writer(scope, idle) as writer:
                writer.write_event(b"one event", routing_key="k").result(timeout=60)
            peak = 0
            with mgr.create_writer(scope, stream) as writer:
                for i in range(320):  # 320 MB: ten times the cache, ten journal files
                    writer.write_events(payload, routing_key="k").result(timeout=60)
                    if i % 40 == 39:
                        peak = max(peak, max(b["ledgers"] for b in _bookie_info(mgr)))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                info = _bookie_info(mgr)
                ledgers = max(b["ledgers"] for b in info)
                files = max(b["files"] for b in info)
                if ledgers <= LEDGERS_MAX and files <= JOURNAL_FILES_MAX:
                    break
                time.sleep(0.5)
            assert max(peak, ledgers) <= LEDGERS_MAX, (peak, ledgers, info)
            assert files <= JOURNAL_FILES_MAX, ("journal files in use", info)
            workers = [p.info for p in mgr.status().processes if p.role == "worker"]
            assert sum(w["idle_checkpoints"] for w in workers) > 0, workers
    finally:
        cluster.kill()


def _bookie_info(mgr) -> list[dict]:
    return [p.info for p in mgr.status().processes if p.role == "bookie"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["rollover_after_create", "truncate_after_meta"])
def test_a_worker_killed_mid_rollover_or_truncation_loses_nothing(tmp_path: Path, point: str):
    """TESTING.md row 18 over the replicated log: the worker SIGKILLs itself at the crash
    point (once); the host restarts it, its containers recover, the writer resends. Every
    event is read exactly once, and the offline check finds every closed ledger's entries
    on the bookies (no metadata names a deleted ledger)."""
    import subprocess
    import sys

    marker = tmp_path / "fired"
    cluster = Standalone(
        tmp_path / "data",
        extra=[*REPLICATED, "--ledger-size", "16M", "--flush-wait", "1"],
        cache_size="32M",
        env={"STREAMVAULT_CRASH_POINT": f"{point}:{marker}"},
    ).start()
    total, keys = 80_000, 8
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=2)
            with mgr.create_writer(scope, stream) as writer:
                futures = [
                    writer.write_event(
                        event(i % keys, i // keys, size=1000), routing_key=f"k{i % keys}"
                    )
                    for i in range(total)
                ]
                writer.flush(timeout=120)
            assert all(f.exception() is None for f in futures)
            assert marker.exists(), f"crash point {point} never fired"
            got = read_all(mgr, scope, stream, total=total)
        check_exactly_once(got, expected_counts(total, keys))
        assert cluster.stop() == 0
    finally:
        cluster.kill()
    inspect = subprocess.run(
        [sys.executable, "-m", "streamvault.tools.cli", "log", "inspect"]
        + ["--data-dir", str(cluster.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inspect.returncode == 0, inspect.stdout[-2000:] + inspect.stderr[-2000:]


def _armed_run(tmp_path: Path, env_name: str, point: str, total: int) -> Standalone:
    """A replicated standalone with `point` armed (once, by marker) in every process; write
    `total` events, check every future, that the point fired, and that every event is read
    exactly once after the bookies are all up again. Returns the (killed) cluster."""
    marker = tmp_path / "fired"
    cluster = Standalone(
        tmp_path / "data", extra=REPLICATED, env={env_name: f"{point}:{marker}"}
    ).start()
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=2)
            with mgr.create_writer(scope, stream) as writer:
                futures: list = []
                done = threading.Event()
                write_in_background(writer, futures, total, done, keys=KEYS).join(timeout=120)
                writer.flush(timeout=120)
            assert all(f.exception() is None for f in futures)
            assert marker.exists(), f"{point} never fired"
            _wait_bookies_up(mgr, 3)
            got = read_all(mgr, scope, stream, total=total)
        check_exactly_once(got, expected_counts(total, KEYS))
        return cluster
    finally:
        cluster.kill()


@pytest.mark.parametrize(
    "point", ["journal_before_write", "journal_after_write_before_sync", "journal_after_sync"]
)
def test_a_bookie_killed_mid_commit_loses_nothing(tmp_path: Path, point: str):
    """TESTING.md rows 1 and 3 on a replica: one bookie SIGKILLs itself at a point of its
    group commit (once); the standalone restarts it and its journal recovers (a torn tail
    cut); the log went on at Qa meanwhile; every event is read exactly once."""
    _armed_run(tmp_path, "STREAMVAULT_CRASH_POINT", point, total=30_000)


def test_fsync_eio_on_a_bookie_is_fail_stop_and_loses_nothing(tmp_path: Path):
    """TESTING.md row 9 on a replica: one bookie's fdatasync returns EIO (a fault point,
    once); it stops without acknowledging anything of that commit (exit 3, never retried),
    the standalone restarts it, and every event is read exactly once."""
    cluster = _armed_run(tmp_path, "STREAMVAULT_FAULT_POINT", "journal_fdatasync_eio", total=20_000)
    logs = cluster.logs(tail=400)
    assert "fault point journal_fdatasync_eio" in logs, logs
    assert "exited code=3" in logs, logs
