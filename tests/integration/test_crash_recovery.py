"""SIGKILL of the processes of a standalone while a writer is writing: nothing acknowledged is
lost, the writer resends what was not, and nothing is duplicated."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
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

KEYS = 64
EVENTS = 100_000


def test_sigkill_every_process_mid_write_then_restart_same_writer_exactly_once(standalone):
    scope, stream = unique("s"), unique("t")
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=4)
        writer = mgr.create_writer(scope, stream)
        futures: list = []
        done = threading.Event()
        thread = write_in_background(writer, futures, EVENTS, done, keys=KEYS)
        wait_acked(futures, 20_000, timeout_s=60)
        assert not done.is_set(), "the writer finished before the crash: nothing was tested"
        standalone.kill()  # SIGKILL to every process of the standalone, mid-write
        time.sleep(0.5)
        standalone.start()  # same data dir, same controller port
        thread.join(timeout=120)
        assert done.is_set()
        writer.flush(timeout=120)
        assert all(f.done() and f.exception() is None for f in futures)
        writer.close()
        got = read_all(mgr, scope, stream, total=EVENTS)
    check_exactly_once(got, expected_counts(EVENTS, KEYS))


def test_killed_worker_is_restarted_and_its_containers_recover(standalone):
    """SIGKILL one worker: the host restarts it, the writer reconnects, no event is lost."""
    scope, stream = unique("s"), unique("t")
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=4)
        before = {p.id: p.pid for p in mgr.status().processes if p.role == "worker"}
        with mgr.create_writer(scope, stream) as writer:
            futures: list = []
            done = threading.Event()
            thread = write_in_background(writer, futures, 40_000, done, keys=KEYS)
            wait_acked(futures, 10_000, timeout_s=60)
            os.kill(before["0"], signal.SIGKILL)
            thread.join(timeout=120)
            writer.flush(timeout=120)
        assert all(f.exception() is None for f in futures)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = {p.id: (p.pid, p.state) for p in mgr.status().processes if p.role == "worker"}
            if after.get("0", (0, ""))[0] not in (0, before["0"]) and after["0"][1] == "up":
                break
            time.sleep(0.2)
        assert after["0"][0] != before["0"] and after["0"][1] == "up", after
        assert after["1"][0] == before["1"], "the other worker must not have been restarted"
        assert psutil.Process(after["0"][0]).is_running()
        got = read_all(mgr, scope, stream, total=40_000)
    check_exactly_once(got, expected_counts(40_000, KEYS))


def test_clean_stop_and_restart_resumes_where_it_stopped(standalone):
    scope, stream = unique("s"), unique("t")
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=2)
        with mgr.create_writer(scope, stream) as writer:
            for i in range(5000):
                writer.write_event(event(i % 8, i // 8), routing_key=f"k{i % 8}")
    assert standalone.stop() == 0
    standalone.start()
    with StreamManager(standalone.controller) as mgr:
        assert scope in mgr.list_scopes() and stream in mgr.list_streams(scope)
        with mgr.create_writer(scope, stream) as writer:
            for i in range(5000, 10_000):
                writer.write_event(event(i % 8, i // 8), routing_key=f"k{i % 8}")
        got = read_all(mgr, scope, stream, total=10_000)
    check_exactly_once(got, {k: 10_000 // 8 for k in range(8)})


def test_corruption_in_the_middle_of_a_log_stops_only_that_container(standalone):
    """A flipped byte in acknowledged data: that container stops with DataCorruption, the
    cluster still starts, and every other container keeps serving."""
    from streamvault.client.protocol.errors import DataCorruption
    from streamvault.client.protocol.naming import container_for
    from streamvault.dataplane.log.framing import RECORD_HEADER_BYTES

    scope, bad, good = unique("s"), unique("bad"), unique("good")
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, bad, initial_segments=1)
        segment = mgr.get_stream_info(scope, bad).segments[0].segment
        container = container_for(segment, standalone.containers)
        candidates = [unique("good") for _ in range(100)]
        good = next(
            n
            for n in candidates
            if container_for(f"{scope}/{n}/0", standalone.containers) != container
        )
        mgr.create_stream(scope, good, initial_segments=1)
        with mgr.create_writer(scope, bad) as writer:
            for batch in range(5):
                writer.write_events([event(0, batch * 100 + i) for i in range(100)]).result(30)
    standalone.stop()
    ledgers = sorted((standalone.data_dir / "log" / f"container-{container:04d}").glob("*.log"))
    with open(ledgers[0], "r+b") as f:  # the payload of entry 0 (the CREATE, long durable)
        f.seek(RECORD_HEADER_BYTES + 2)
        byte = f.read(1)
        f.seek(RECORD_HEADER_BYTES + 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    standalone.start()
    with StreamManager(standalone.controller) as mgr:
        workers = [p for p in mgr.status().processes if p.role == "worker"]
        failed = {c: msg for w in workers for c, msg in w.info["failed_containers"].items()}
        assert list(failed) == [str(container)] and "confirms it durable" in failed[str(container)]
        writer = mgr.create_writer(scope, bad)
        with pytest.raises(DataCorruption):
            writer.write_event(b"x").result(timeout=30)
        writer.close(timeout=0)
        with mgr.create_writer(scope, good) as writer:
            writer.write_event(event(0, 0)).result(timeout=30)
        group = next(
            g
            for g in (unique("g") for _ in range(100))
            if container_for(f"{scope}/_RG{g}/0", standalone.containers) != container
        )
        assert read_all(mgr, scope, good, total=1, readers=1, group=group) == [event(0, 0)]
