"""Recovery time after SIGKILL with 1 GiB written (issue: cache and LTS).

A standalone takes `--gib` GiB of 1000-byte events (`write_events` of 1000, over `--segments`
segments); then, while it is idle:

1. one worker is SIGKILLed: the time until an append to every segment is acknowledged again
   (the host restarts the worker, its containers recover from their logs); with
   `--bookie-down` (replicated standalones), one bookie is SIGSTOPped first and resumed
   after this step: a hung bookie that recovery must not wait for;
2. every process is SIGKILLed and the standalone restarted on the same data dir and port: the
   time until it prints `ready`, until an append to every segment is acknowledged, and until
   a reader group started at the tail reads an event written after the restart.

Back of the envelope: without checkpoints recovery would replay the whole log (1 GiB at a
few hundred MB/s is several seconds); with checkpoints and log truncation below what LTS
holds, a container replays at most about a checkpoint interval plus what is not yet in LTS,
so recovery should not grow with what was written. Target: <= 5 s.

    python perf/bench_recovery.py [--gib 1] [--runs 3] [--segments 4] [--standalone-args ARGS]
        [--bookie-down]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_append import machine, start_standalone, stop_standalone  # noqa: E402

from streamvault.client import StreamManager  # noqa: E402

EVENT_BYTES = 1000
BATCH = 1000
DEADLINE_S = 120.0


def keys_per_segment(mgr, scope: str, stream: str, segments: int) -> list[str]:
    """One routing key landing in each segment (the client's own routing)."""
    from streamvault.client.protocol.naming import key_point

    keys: dict[int, str] = {}
    for i in range(10_000):
        key = f"k{i}"
        keys.setdefault(int(key_point(key) * segments), key)
        if len(keys) == segments:
            break
    return [keys[s] for s in sorted(keys)]


def write_backlog(mgr, scope: str, stream: str, total_bytes: int, keys: list[str]) -> float:
    events = [os.urandom(EVENT_BYTES) for _ in range(BATCH)]
    calls = total_bytes // (EVENT_BYTES * BATCH)
    start = time.perf_counter()
    with mgr.create_writer(scope, stream) as writer:
        for i in range(calls):
            writer.write_events(events, routing_key=keys[i % len(keys)])
        writer.flush(timeout=DEADLINE_S)
    return calls * BATCH * EVENT_BYTES / (time.perf_counter() - start) / 1e6


def time_until_appends(controller: str, scope: str, stream: str, keys: list[str]) -> float:
    """Seconds until one event per segment is acknowledged (a fresh client each attempt)."""
    start = time.perf_counter()
    with StreamManager(controller) as mgr, mgr.create_writer(scope, stream) as writer:
        futures = [writer.write_event(b"after-crash", routing_key=key) for key in keys]
        for future in futures:
            future.result(timeout=DEADLINE_S)
    return time.perf_counter() - start


def time_until_tail_read(controller: str, scope: str, stream: str, key: str) -> float:
    start = time.perf_counter()
    group = f"tail{os.getpid()}{int(start * 1e6)}"
    with StreamManager(controller) as mgr:
        mgr.create_reader_group(scope, group, [stream], from_tail=True)
        with (
            mgr.create_reader(scope, group, "r") as reader,
            mgr.create_writer(scope, stream) as writer,
        ):
            writer.write_event(b"tail-marker", routing_key=key).result(timeout=DEADLINE_S)
            while time.perf_counter() - start < DEADLINE_S:
                event = reader.read_next_event(timeout=1.0)
                if event is not None and bytes(event.data) == b"tail-marker":
                    return time.perf_counter() - start
    raise SystemExit("the tail reader never saw the marker")


def worker_pids(mgr) -> list[int]:
    return [p.pid for p in mgr.status().processes if p.role == "worker"]


def bookie_pids(mgr) -> list[int]:
    return [p.pid for p in mgr.status().processes if p.role == "bookie"]


def kill_all(proc: subprocess.Popen) -> None:
    pids = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs([p for p in map(_proc, pids) if p is not None], timeout=30)


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def du_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def one_run(args: argparse.Namespace, run: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="sv-recovery-", dir=args.dir)
    data = os.path.join(tmp, "data")
    extra = ["--cache-size", args.cache, *args.standalone_args.split()]
    proc, controller = start_standalone(data, 0, extra)
    port = int(controller.rsplit(":", 1)[1])
    scope, stream = "bench", f"recovery{run}"
    try:
        with StreamManager(controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=args.segments)
            keys = keys_per_segment(mgr, scope, stream, args.segments)
            write_mb_s = write_backlog(mgr, scope, stream, int(args.gib * 2**30), keys)
            time.sleep(args.settle)
            victim = worker_pids(mgr)[0]
            hung = bookie_pids(mgr)[:1] if args.bookie_down else []
        if args.bookie_down and not hung:
            raise SystemExit("--bookie-down needs a replicated standalone (--standalone-args)")
        log_bytes = du_bytes(os.path.join(data, "log"))
        for pid in hung:
            os.kill(pid, signal.SIGSTOP)
        try:
            os.kill(victim, signal.SIGKILL)
            worker_s = time_until_appends(controller, scope, stream, keys)
        finally:
            for pid in hung:
                os.kill(pid, signal.SIGCONT)

        kill_all(proc)
        start = time.perf_counter()
        proc, _ = start_standalone(data, 0, extra, port=port)
        ready_s = time.perf_counter() - start
        appends_s = ready_s + time_until_appends(controller, scope, stream, keys)
        tail_s = time_until_tail_read(controller, scope, stream, keys[0])
        return {
            "write_mb_s": write_mb_s,
            "log_files_mib": log_bytes / 2**20,  # ledger files, preallocated
            "worker_kill_s": worker_s,
            "all_kill_ready_s": ready_s,
            "all_kill_appends_s": appends_s,
            "tail_read_s": tail_s,
        }
    finally:
        stop_standalone(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB written before the crash")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--cache", default="256M", help="--cache-size of the standalone")
    ap.add_argument("--settle", type=float, default=2.0, help="idle seconds before the kill")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the data dir goes (default: temp)")
    ap.add_argument(
        "--standalone-args",
        default="",
        help="extra options for the standalone, e.g. '--replicas 3 --ack-quorum 2'",
    )
    ap.add_argument(
        "--bookie-down",
        action="store_true",
        help="SIGSTOP one bookie during the worker kill (replicated standalones)",
    )
    args = ap.parse_args()
    runs = [one_run(args, i) for i in range(args.runs)]
    m = machine()
    print(f"machine: {m['cpu']} x{m['cores']}, python {m['python']}, commit {m['commit']}")
    print(
        f"{args.standalone_args or 'RF=1'}{', one bookie stopped' if args.bookie_down else ''}, "
        f"{args.gib:g} GiB of {EVENT_BYTES} B events over "
        f"{args.segments} segments, "
        f"cache {args.cache}; median of {args.runs} (all runs in brackets)"
    )
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:<20}{statistics.median(values):>10.2f}  {[round(v, 2) for v in values]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
