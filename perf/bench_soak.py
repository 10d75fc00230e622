"""A soak of streams that write and pause in turn (issues: replicated log, cache and LTS).

`--streams` streams (one segment each) write for `--period` seconds and pause for as long,
staggered so half of them write at any time, `--rate-mb` MB/s in all (calls of 100 x
1000-byte events, paced; latency from each call's scheduled time), for `--seconds` on one
RF=3 cluster (`--replicas 3 --ack-quorum 2`; `--rf1` for the embedded single replica).
Every 10 s it prints the window's ack p95, the bookies' journal files in use, bytes
compaction copied forward, spare files zero-filled and freed files removed, the workers'
idle checkpoints and cache use; at the end the totals against the bytes written. Anything
that grows without bound over a long run (journal files, copies, latency) shows here and
in no short benchmark.

    python perf/bench_soak.py [--seconds 240] [--streams 4] [--period 20] [--rate-mb 40]
        [--rf1] [--standalone-args "..."]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_append as bench  # noqa: E402

from streamvault.client import StreamManager  # noqa: E402

EVENT_BYTES = 1000
PER_CALL = 100
WINDOW_S = 10.0


def writer(mgr, index: int, args, latencies: list, stop: threading.Event) -> None:
    """Write in periods of `args.period` s, pausing as long between them; stream `index`'s
    periods start `index` x period / (streams / 2) s in."""
    events = [os.urandom(EVENT_BYTES) for _ in range(PER_CALL)]
    active = max(1, args.streams // 2)
    interval = PER_CALL * EVENT_BYTES / (args.rate_mb * 1e6 / active)
    offset = index * 2 * args.period / args.streams
    with mgr.create_writer("soak", f"s{index}") as w:
        begin = time.perf_counter()
        calls, start = 0, None
        while not stop.is_set():
            if int((time.perf_counter() - begin + offset) / args.period) % 2:
                calls, start = 0, None  # paused
                time.sleep(0.05)
                continue
            if start is None:
                start = time.perf_counter()
            due = start + calls * interval
            if (delay := due - time.perf_counter()) > 0:
                time.sleep(delay)
            future = w.write_events(events, routing_key="k")
            future.add_done_callback(
                lambda f, due=due: latencies.append((time.monotonic(), time.perf_counter() - due))
            )
            calls += 1
        w.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--period", type=float, default=20.0)
    parser.add_argument("--rate-mb", type=float, default=40.0)
    parser.add_argument("--rf1", action="store_true", help="the embedded single replica")
    parser.add_argument("--standalone-args", default="")
    args = parser.parse_args()
    if args.streams < 2:
        parser.error("--streams must be at least 2")
    extra = args.standalone_args.split()
    if not args.rf1:
        extra += ["--replicas", "3", "--ack-quorum", "2"]
    tmp = tempfile.mkdtemp(prefix="sv-bench-")
    proc = None
    latencies: list[tuple[float, float]] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        proc, controller = bench.start_standalone(os.path.join(tmp, "data"), 0, extra)
        with StreamManager(controller) as mgr:
            mgr.create_scope("soak")
            for i in range(args.streams):
                mgr.create_stream("soak", f"s{i}", initial_segments=1)
            threads = [
                threading.Thread(target=writer, args=(mgr, i, args, latencies, stop))
                for i in range(args.streams)
            ]
            for t in threads:
                t.start()
            begin = time.monotonic()
            p95s = []
            while time.monotonic() - begin < args.seconds:
                time.sleep(WINDOW_S)
                now = time.monotonic()
                recent = sorted(lat for at, lat in list(latencies) if at > now - WINDOW_S)
                p95 = 1000 * recent[int(0.95 * (len(recent) - 1))] if recent else 0.0
                p95s.append(p95)
                processes = mgr.status().processes
                bookies = [p.info for p in processes if p.role == "bookie"]
                workers = [p.info for p in processes if p.role == "worker"]
                journal = ""
                if bookies:
                    b = bookies[0]
                    journal = (
                        f" journal files {[x['files'] for x in bookies]}"
                        f" copied {b['bytes_relocated'] / 1e6:.0f} MB"
                        f" zero-filled {b['files_spare']} removed {b['files_deleted']}"
                    )
                print(
                    f"t={now - begin:4.0f} s calls {len(recent):5d} p95 {p95:6.1f} ms{journal}"
                    f" idle checkpoints {sum(w.get('idle_checkpoints', 0) for w in workers)}"
                    f" cache {max((w['cache_pinned'] or 0) for w in workers):.2f}",
                    flush=True,
                )
            stop.set()
            for t in threads:
                t.join(timeout=60)
            written = len(latencies) * PER_CALL * EVENT_BYTES
            bookies = [p.info for p in mgr.status().processes if p.role == "bookie"]
    finally:
        stop.set()
        if proc is not None:
            bench.stop_standalone(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{written / 1e6:.0f} MB written over {args.seconds:g} s by {args.streams} streams "
        f"({args.period:g} s on / off, {args.rate_mb:g} MB/s in all, "
        f"{'RF=1' if args.rf1 else 'RF=3'}); 10 s windows' p95 "
        f"{min(p95s):.1f}-{max(p95s):.1f} ms"
    )
    for i, b in enumerate(bookies):
        print(
            f"bookie {i}: compaction copied {b['bytes_relocated'] / 1e6:.0f} MB "
            f"({b['bytes_relocated'] / max(written, 1):.1%} of the bytes written), "
            f"{b['files_spare']} files zero-filled, {b['files_deleted']} removed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
