"""SIGKILL of the processes of a standalone while a writer is writing: nothing acknowledged is
lost, the writer resends what was not, and nothing is duplicated."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
from support.history import check_exactly_once, event, expected_counts, read_all, unique

from streamvault.client import StreamManager

KEYS = 64
EVENTS = 100_000


def _write_in_background(
    writer, futures: list, total: int, done: threading.Event
) -> threading.Thread:
    def run() -> None:
        for i in range(total):
            futures.append(
                writer.write_event(event(i % KEYS, i // KEYS), routing_key=f"key-{i % KEYS}")
            )
            if i % 2000 == 0:
                time.sleep(0.01)  # spread the writes over the crash
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_acked(futures: list, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for f in futures[:count] if f.done()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} events acknowledged in {timeout_s}s")


def test_sigkill_every_process_mid_write_then_restart_same_writer_exactly_once(standalone):
    scope, stream = unique("s"), unique("t")
    with StreamManager(standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=4)
        writer = mgr.create_writer(scope, stream)
        futures: list = []
        done = threading.Event()
        thread = _write_in_background(writer, futures, EVENTS, done)
        _wait_acked(futures, 20_000, timeout_s=60)
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
            thread = _write_in_background(writer, futures, 40_000, done)
            _wait_acked(futures, 10_000, timeout_s=60)
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
