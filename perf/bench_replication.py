"""RF=3 against RF=1, back to back (issue: replicated durable log).

The target: with 100-byte events and one writer, RF=3/Qa=2 on one machine reaches at least
half of the RF=1 throughput with p95 <= 15 ms. Each round measures, one after the other:
1. RF=1 (the embedded single replica): `write_events` as fast as admitted -> T1;
2. RF=3 (`--replicas 3 --ack-quorum 2`): as fast as admitted -> T3, then paced at
   `--share` x T1 (default 0.5), latency counted from each call's scheduled time.
The round's verdict is the paced RF=3 run: it kept up (>= 98 % of the offered rate),
delivered at least half of this round's T1 (`--share` above 0.5 leaves headroom), with
p95 <= 15 ms. Rounds alternate the order of the two saturating runs, so drift of a shared
machine hits both alike; medians over the rounds are printed with every round. Every
paced run follows a saturated run on its own cluster (with RF=3 first, the paced run needs
that round's T1, so a third cluster is started after RF=1's and warmed up, its warm-up
printed beside the round): the target is about a running cluster, and a fresh one's first
seconds (zero-filling its bookies' next journal files, the first LTS uploads) are not.

    python perf/bench_replication.py [--rounds 3] [--seconds 6] [--share 0.5]
        [--in-flight-mib X] [--batch-kib Y] [--standalone-args "..."]  (all given to both
        clusters) [--stages]

`--stages` prints, after each paced run, the p50/p95/max of every stage the servers time
(`streamvault status`: a worker's quorum round trip, each bookie's turn, pwrite and
fdatasync; client/protocol/latency.py), so a round that misses shows where its time went.

`--in-flight-mib X` sets the writer's window (in_flight_bytes_max, and buffer_bytes_max to at
least that): one writer's throughput is at most its window over the round trip, at RF=1
and RF=3 alike, so the window moves both. `--batch-kib Y` sets its block size
(batch_bytes_max, at most the window).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_append as bench  # noqa: E402

from streamvault.client import StreamManager, WriterConfig  # noqa: E402

P95_TARGET_MS = 15.0
TARGET_SHARE = 0.5
"""RF=3 must deliver this share of the same round's RF=1 throughput."""
KEPT_UP = 0.98
"""A paced run that delivered less than this share of its offered rate fell behind."""


def measure(
    extra: list[str], seconds: float, rates: list[float], *, stages: bool = False
) -> list[dict]:
    """One cluster: a `write_events` run per rate (0: as fast as admitted), in order; with
    `stages`, each run's result also holds the servers' stage latencies after it."""
    tmp = tempfile.mkdtemp(prefix="sv-bench-")
    proc = None
    try:
        proc, controller = bench.start_standalone(os.path.join(tmp, "data"), 0, extra)
        with StreamManager(controller) as mgr:
            scope, stream = "bench", f"replication{os.getpid()}"
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            runs = []
            for rate in rates:
                run = bench.run_write_events(mgr, scope, stream, seconds, 1000, 100, 1, rate=rate)
                if stages:
                    run["stages"] = bench.stages(mgr)
                runs.append(run)
            return runs
    finally:
        if proc is not None:
            bench.stop_standalone(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--share", type=float, default=0.5, help="RF=3 paced at this x RF=1")
    ap.add_argument(
        "--in-flight-mib",
        type=float,
        default=0,
        help="writer window in MiB, both clusters (default: the writer's default)",
    )
    ap.add_argument(
        "--batch-kib",
        type=float,
        default=0,
        help="writer block size in KiB, both clusters (default: the writer's default)",
    )
    ap.add_argument("--standalone-args", default="", help="extra options for both clusters")
    ap.add_argument(
        "--stages",
        action="store_true",
        help="after each paced run, print the bookies' and workers' stage latencies",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.in_flight_mib < 0 or args.batch_kib < 0:
        ap.error("--in-flight-mib and --batch-kib must not be negative")
    if args.in_flight_mib or args.batch_kib:
        default = WriterConfig()
        window = int(args.in_flight_mib * 1024 * 1024) or default.in_flight_bytes_max
        batch = int(args.batch_kib * 1024) or default.batch_bytes_max
        if batch > window:
            ap.error(f"--batch-kib {args.batch_kib:g} is larger than the window ({window} B)")
        bench.CONFIG = WriterConfig(
            in_flight_bytes_max=window,
            buffer_bytes_max=max(window, default.buffer_bytes_max),
            batch_bytes_max=batch,
        )
    common = args.standalone_args.split()
    replicated = [*common, "--replicas", "3", "--ack-quorum", "2"]
    m = bench.machine()
    print(f"machine: {m['cpu']} x{m['cores']}, python {m['python']}, commit {m['commit']}")
    writer = bench.CONFIG or WriterConfig()
    print(
        "100 B events, write_events batch=1000, one writer "
        f"({writer.in_flight_bytes_max / 2**20:g} MiB window, "
        f"{writer.batch_bytes_max / 1024:g} KiB blocks), "
        f"o_direct+fdatasync, {args.seconds:g} s per run; RF=3 paced at {args.share:g} x RF=1"
    )
    rows = []
    for i in range(args.rounds):
        rf3_first = i % 2 == 1
        warm = None
        if rf3_first:  # the paced run needs this round's T1: a cluster of its own after it
            (sat,) = measure(replicated, args.seconds, [0])
            (rf1,) = measure(common, args.seconds, [0])
            rate = args.share * rf1["events_per_s"]
            warm, paced = measure(replicated, args.seconds, [0, rate], stages=args.stages)
        else:
            (rf1,) = measure(common, args.seconds, [0])
            rate = args.share * rf1["events_per_s"]
            sat, paced = measure(replicated, args.seconds, [0, rate], stages=args.stages)
        row = {
            "t1": rf1["events_per_s"],
            "p95_1": rf1["p95_ms"],
            "t3": sat["events_per_s"],
            "p95_3": sat["p95_ms"],
            "rate": rate,
            "paced": paced["events_per_s"],
            "paced_p95": paced["p95_ms"],
        }
        row["share_of_t1"] = row["paced"] / row["t1"]
        row["met"] = (
            row["paced"] >= KEPT_UP * rate
            and row["share_of_t1"] >= KEPT_UP * TARGET_SHARE
            and row["paced_p95"] <= P95_TARGET_MS
        )
        rows.append(row)
        warm_up = (
            f" (after a warm-up of its cluster: {warm['events_per_s'] / 1e6:.2f} M/s, p95 "
            f"{warm['p95_ms']:.1f} ms)"
            if warm is not None
            else ""
        )
        print(
            f"round {i + 1}{' (RF=3 first)' if rf3_first else ''}: "
            f"RF=1 {row['t1'] / 1e6:.2f} M/s (p95 {row['p95_1']:.1f} ms); "
            f"RF=3 {row['t3'] / 1e6:.2f} M/s ({row['t3'] / row['t1']:.2f}x, p95 "
            f"{row['p95_3']:.1f} ms); RF=3 paced at {rate / 1e6:.2f} M/s: "
            f"{row['paced'] / 1e6:.2f} M/s ({row['share_of_t1']:.2f}x RF=1) p95 "
            f"{row['paced_p95']:.1f} ms{warm_up} "
            f"-> {'met' if row['met'] else 'not met'}",
            flush=True,
        )
        if args.stages:
            print(f"  after the paced run, p50/p95/max ms: {paced['stages']}", flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(
        f"medians: RF=1 {med('t1') / 1e6:.2f} M/s, RF=3 {med('t3') / 1e6:.2f} M/s "
        f"({statistics.median(r['t3'] / r['t1'] for r in rows):.2f}x); RF=3 paced at "
        f"{args.share:g}x RF=1: p95 {med('paced_p95'):.1f} ms; target met in "
        f"{sum(r['met'] for r in rows)} of {len(rows)} rounds"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
