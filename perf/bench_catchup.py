"""Catch-up reads while writing (issue: cache and LTS).

A writer appends at a fixed rate (`--rate-mb`, 1000-byte events, 100 per `write_events`)
while a reader, started once a backlog of `--backlog` x the cache size has built up, reads
the stream from the head (history from LTS, then the cached tail). Reported:

- write ack latency p50/p95/p99 before the reader starts and while it catches up;
- the reader's MB/s while catching up, and the time until it reaches the tail (an event
  read less than `--tail-lag` seconds after it was written);
- a check that the reader got every event in order;
- per run, the busiest worker's group-commit cycle p50/p95/max (its status's stage latencies)
  just before the reader starts and as it reaches the tail: whether the write path's own
  write + fdatasync slowed, or the time went elsewhere.

The reader's process is started (interpreter, imports) while the backlog builds; the
catch-up window begins when it is told to create its reader group and read.

Control window: the reader's process also counts its CPU time. Once it has reached the
tail and stopped, a second process with the same scheduling class burns that same share
of a core (a duty cycle of busy-wait and sleep), for as long as the catch-up took, while
the writer goes on. Write p95 in that window shows what another process's CPU load alone
does to the writer on this machine, with no reads served: `during / control` is then the
part of the increase that serving the reads costs.

Back of the envelope: at 50 MB/s a 64 MiB cache holds ~1.3 s of data, so a 4x backlog is
~5 s of writes, all but the last second in LTS only. The default 12x backlog keeps the
reader busy for several seconds, which gives steadier percentiles than a 1-2 s window.
Target: the reader reads >= 2x the write rate, and write p95 during catch-up stays within
1.5x of write p95 without it.

    python perf/bench_catchup.py [--rate-mb 50] [--cache 64M] [--backlog 12] [--runs 3]
        [--reader-sched normal|idle] [--reader-rate X] [--reader-api batch|event]
        [--no-control]

`--reader-rate X` holds the reader to X times the write rate (0: as fast as it can). A reader
that shares the machine and reads as fast as it can takes every CPU cycle it gets (about
0.7 of a core here whatever its cost per event), so its own load sets much of the write p95
increase; held to the target's 2x-3x it shows what a catch-up reader at that rate costs.
`--reader-api batch` (the default) reads with `read_next_events` and checks each batch's
order and write times as numpy arrays; `event` reads and checks one event per Python call.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_append import machine, percentiles, start_standalone, stop_standalone  # noqa: E402

from streamvault.client import StreamManager  # noqa: E402
from streamvault.client.protocol.sizes import parse_size  # noqa: E402

EVENT_BYTES = 1000
BATCH = 100
CONTROL_SETTLE_S = 1.0  # after the reader stops, before the control window opens
STAMP = struct.Struct("<dQ")  # write time, sequence number
STAMP_DTYPE = np.dtype([("at", "<f8"), ("seq", "<u8")])  # the same, for a batch's rows


def writer_loop(
    mgr,
    scope: str,
    stream: str,
    rate_mb: float,
    stop: threading.Event,
    latencies: list[tuple[float, float]],
    written: list[int],
    payload: str = "repeated",
) -> None:
    pad_bytes = EVENT_BYTES - STAMP.size
    # repeated: one random pad in every event (zstd shrinks the chunks ~60x); random: each
    # event's pad is the next slice of a 16 MiB random pool (chunks do not compress, like
    # video or encrypted payloads)
    pool = os.urandom(16 << 20) if payload == "random" else os.urandom(pad_bytes)
    slots = len(pool) // pad_bytes
    interval = BATCH * EVENT_BYTES / (rate_mb * 1e6)
    seq = 0
    with mgr.create_writer(scope, stream) as writer:
        next_at = time.perf_counter()
        while not stop.is_set():
            now = time.time()
            if slots == 1:  # as before --payload existed: one concatenation per event
                batch = [STAMP.pack(now, seq + i) + pool for i in range(BATCH)]
            else:
                pads = [(seq + i) % slots * pad_bytes for i in range(BATCH)]
                batch = [
                    STAMP.pack(now, seq + i) + pool[at : at + pad_bytes]
                    for i, at in enumerate(pads)
                ]
            t0 = time.perf_counter()
            future = writer.write_events(batch, routing_key="k")
            future.add_done_callback(
                lambda f, t0=t0: latencies.append((t0, time.perf_counter() - t0))
            )
            seq += BATCH
            written[0] = seq
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


def reader_process(
    controller: str,
    scope: str,
    stream: str,
    tail_lag: float,
    deadline_s: float,
    sched: str,
    rate_bytes: float,
    api: str,
    go,
    out,
) -> None:
    if sched == "idle":  # only CPU time nothing else of this machine wants
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    out.put("spawned")
    go.wait()
    cpu_start = time.process_time()
    with StreamManager(controller) as mgr:
        mgr.create_reader_group(scope, "catchup", [stream])
        reader = mgr.create_reader(scope, "catchup", "r")
        start = time.perf_counter()
        count = 0
        expected = 0
        ordered = True
        reached = None
        paced_at = 0
        while time.perf_counter() - start < deadline_s:
            if api == "batch":  # each batch checked as arrays: no per-event Python work
                batch = reader.read_next_events(2.0)
                if batch is None:
                    break
                stamps = np.ascontiguousarray(batch.array()[:, : STAMP.size]).view(STAMP_DTYPE)
                seqs = stamps["seq"].reshape(-1)
                ordered &= bool(seqs[0] == expected and (np.diff(seqs) == 1).all())
                expected = int(seqs[-1]) + 1
                count += len(seqs)
                written_at = float(stamps["at"][-1, 0])
            else:
                event = reader.read_next_event(2.0)
                if event is None:
                    break
                written_at, seq = STAMP.unpack_from(event.data)
                ordered &= seq == expected
                expected = seq + 1
                count += 1
            if rate_bytes and count - paced_at >= 256:  # held to its rate: sleep off any lead
                paced_at = count
                lead = count * EVENT_BYTES / rate_bytes - (time.perf_counter() - start)
                if lead > 0:
                    time.sleep(lead)
            if time.time() - written_at < tail_lag:
                reached = time.perf_counter() - start
                break
        reader.close()
    out.put(
        {
            "events": count,
            "seconds": reached or (time.perf_counter() - start),
            "reached_tail": reached is not None,
            "in_order": ordered,
            "cpu_s": time.process_time() - cpu_start,
        }
    )


def control_process(sched: str, go, job, out) -> None:
    """Burn `share` of one core for `seconds`: busy-wait in 0.5 ms slices whenever the CPU
    used so far is below `share` of the time elapsed, sleep 0.5 ms otherwise."""
    if sched == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    out.put("spawned")
    go.wait()
    share, seconds = job.get(timeout=600)
    base = time.process_time()
    start = time.perf_counter()
    while (now := time.perf_counter()) < start + seconds:
        if time.process_time() - base < share * (now - start):
            while time.perf_counter() < now + 0.0005:
                pass
        else:
            time.sleep(0.0005)
    out.put({"cpu_s": time.process_time() - base, "seconds": seconds})


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes `pids` have used."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def one_run(args: argparse.Namespace) -> dict:
    tmp = tempfile.mkdtemp(prefix="sv-catchup-")
    cache = parse_size(args.cache)
    proc, controller = start_standalone(
        os.path.join(tmp, "data"),
        args.workers,
        ["--cache-size", args.cache, "--flush-wait", "2", *args.standalone_args.split()],
    )
    try:
        with StreamManager(controller) as mgr:
            scope, stream = "bench", f"catchup{os.getpid()}"
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            stop = threading.Event()
            latencies: list[tuple[float, float]] = []
            written = [0]
            thread = threading.Thread(
                target=writer_loop,
                args=(mgr, scope, stream, args.rate_mb, stop, latencies, written, args.payload),
            )
            writing_since = time.perf_counter()
            thread.start()
            backlog_s = args.backlog * cache / (args.rate_mb * 1e6)
            # the reader's interpreter starts (imports) before the backlog is in place: its
            # start-up (about a second, a third of it CPU) is not catch-up work
            ctx = mp.get_context("spawn")
            out, go = ctx.Queue(), ctx.Event()
            reader = ctx.Process(
                target=reader_process,
                args=(
                    controller,
                    scope,
                    stream,
                    args.tail_lag,
                    args.deadline,
                    args.reader_sched,
                    args.reader_rate * args.rate_mb * 1e6,
                    args.reader_api,
                    go,
                    out,
                ),
                daemon=True,
            )
            reader.start()
            if out.get(timeout=60) != "spawned":
                raise SystemExit("reader process did not start")
            if args.control:
                c_out, c_go, c_job = ctx.Queue(), ctx.Event(), ctx.Queue()
                control = ctx.Process(
                    target=control_process,
                    args=(args.reader_sched, c_go, c_job, c_out),
                    daemon=True,  # a failed run must not leave it waiting
                )
                control.start()
                if c_out.get(timeout=60) != "spawned":
                    raise SystemExit("control process did not start")
            processes = mgr.status().processes
            pids = [p.pid for p in processes if p.role == "worker"]
            uploader = [p.pid for p in processes if p.role == "uploader"]
            time.sleep(max(0.0, backlog_s / 2 - (time.perf_counter() - writing_since)))
            cpu_half, t_half = _cpu_of(pids), time.perf_counter()
            up_half = _cpu_of(uploader)
            time.sleep(max(0.0, backlog_s - (time.perf_counter() - writing_since)))
            cpu_start, up_start = _cpu_of(pids), _cpu_of(uploader)
            commit_before = _commit_stage(mgr)
            reader_started = time.perf_counter()
            go.set()
            result = out.get(timeout=args.deadline + 60)
            reader_done = time.perf_counter()
            cpu_done = _cpu_of(pids)
            commit_during = _commit_stage(mgr)
            reader.join(timeout=30)
            catchup_s = reader_done - reader_started
            share = min(1.0, result["cpu_s"] / catchup_s)
            if args.control:
                time.sleep(CONTROL_SETTLE_S)
                control_started = time.perf_counter()
                c_job.put((share, catchup_s))
                c_go.set()
                burned = c_out.get(timeout=catchup_s + 60)
                control_done = time.perf_counter()
                control.join(timeout=30)
            stop.set()
            thread.join(timeout=60)
            # where read replies came from (worker counters, as of their last heartbeat)
            workers = [p for p in mgr.status().processes if p.role == "worker"]
            sources = {
                key: sum(w.info.get(f"{key}_reads", 0) for w in workers)
                for key in ("lts", "lts_zstd", "cache", "log")
            }
    finally:
        stop_standalone(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    half = reader_started - backlog_s / 2
    before = [lat for t, lat in latencies if half <= t < reader_started]
    during = [lat for t, lat in latencies if reader_started <= t < reader_done]
    mb = result["events"] * EVENT_BYTES / 1e6
    control_stats = None
    if args.control:
        window = [lat for t, lat in latencies if control_started <= t < control_done]
        control_stats = {
            **percentiles(window),
            "share": burned["cpu_s"] / burned["seconds"],
        }
    return {
        "before": percentiles(before),
        "during": percentiles(during),
        "control": control_stats,
        "reader_cpu_share": share,
        "workers_cpu_before": (cpu_start - cpu_half) / (reader_started - t_half),
        "workers_cpu_during": (cpu_done - cpu_start) / (reader_done - reader_started),
        "uploader_cpu_before": (up_start - up_half) / (reader_started - t_half),
        "sources": sources,
        "commit_before": commit_before,
        "commit_during": commit_during,
        "reader_mb_per_s": mb / result["seconds"],
        "time_to_tail_s": result["seconds"],
        "reached_tail": result["reached_tail"],
        "in_order": result["in_order"],
        "backlog_mb": round(args.backlog * cache / 1e6),
        "read_mb": round(mb),
    }


def _commit_stage(mgr) -> str:
    """The busiest worker's group-commit cycles over its last samples (a few seconds here;
    its last heartbeat's, client/protocol/latency.py) as "commit p50/p95/max" in ms."""
    from streamvault.tools.status import stage_line

    stages = [
        p.info.get("latency_ms", {}).get("commit", {})
        for p in mgr.status().processes
        if p.role == "worker" and isinstance(p.info, dict)
    ]
    busiest = max(stages, key=lambda s: s.get("count", 0), default={})
    return stage_line({"commit": busiest}) or "commit ?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate-mb", type=float, default=50.0)
    ap.add_argument("--cache", default="64M")
    ap.add_argument("--backlog", type=float, default=12.0, help="backlog, in cache sizes")
    ap.add_argument("--tail-lag", type=float, default=1.0)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--standalone-args", default="", help="extra options for the standalone")
    ap.add_argument(
        "--reader-sched",
        choices=("normal", "idle"),
        default="normal",
        help="idle: the reader process runs SCHED_IDLE; on a machine the reader shares with "
        "the writer and the server, what is left of the write p95 increase is then the "
        "server's work serving the reads",
    )
    ap.add_argument(
        "--reader-rate",
        type=float,
        default=0.0,
        help="hold the reader to this many times the write rate (0: as fast as it can)",
    )
    ap.add_argument(
        "--reader-api",
        choices=("batch", "event"),
        default="batch",
        help="batch: read_next_events, each batch checked as numpy arrays; event: "
        "read_next_event, one Python call and check per event",
    )
    ap.add_argument(
        "--payload",
        choices=("repeated", "random"),
        default="repeated",
        help="repeated: one pad in every event (compresses well); random: no two events "
        "alike (does not compress: video, encrypted data)",
    )
    ap.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip the control window (the reader's CPU share burned, no reads)",
    )
    args = ap.parse_args()
    runs = [one_run(args) for _ in range(args.runs)]
    m = machine()
    print(f"machine: {m['cpu']} x{m['cores']}, python {m['python']}, commit {m['commit']}")
    print(
        f"writer {args.rate_mb} MB/s of {EVENT_BYTES} B events, cache {args.cache}, backlog "
        f"{args.backlog}x cache, {args.payload} payloads, RF=1, fdatasync before ack, "
        f"reader {args.reader_sched} ({args.reader_api} reads)"
        f"{f' held to {args.reader_rate:g}x the write rate' if args.reader_rate else ''}; "
        f"medians of {args.runs} runs"
    )
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    p95_before = med(lambda r: r["before"]["p95_ms"])
    p95_during = med(lambda r: r["during"]["p95_ms"])
    print(
        f"write p50/p95 before the reader: {med(lambda r: r['before']['p50_ms']):.2f} / "
        f"{p95_before:.2f} ms"
    )
    print(
        f"write p50/p95 during catch-up:   {med(lambda r: r['during']['p50_ms']):.2f} / "
        f"{p95_during:.2f} ms  ({p95_during / max(p95_before, 1e-9):.2f}x; paired: "
        f"{med(lambda r: r['during']['p95_ms'] / max(r['before']['p95_ms'], 1e-9)):.2f}x)"
    )
    cpu_before = med(lambda r: r["workers_cpu_before"])
    cpu_during = med(lambda r: r["workers_cpu_during"])
    per_mb = med(
        lambda r: (r["workers_cpu_during"] - r["workers_cpu_before"]) / r["reader_mb_per_s"]
    )
    print(
        f"workers' CPU: {cpu_before:.2f} of a core before the reader, {cpu_during:.2f} during "
        f"catch-up: {per_mb * 1e3:.2f} ms of CPU per MB read; the uploader's before the "
        f"reader: {med(lambda r: r['uploader_cpu_before']):.2f}"
    )
    if args.control:
        p95_control = med(lambda r: r["control"]["p95_ms"])
        print(
            f"write p50/p95 in the control:    {med(lambda r: r['control']['p50_ms']):.2f} / "
            f"{p95_control:.2f} ms  ({p95_control / max(p95_before, 1e-9):.2f}x; paired: "
            f"{med(lambda r: r['control']['p95_ms'] / max(r['before']['p95_ms'], 1e-9)):.2f}x), "
            "burning "
            f"{med(lambda r: r['control']['share']):.2f} of a core (the reader used "
            f"{med(lambda r: r['reader_cpu_share']):.2f}), no reads"
        )
        print(
            f"during catch-up / control: {p95_during / max(p95_control, 1e-9):.2f}x (paired: "
            f"{med(lambda r: r['during']['p95_ms'] / max(r['control']['p95_ms'], 1e-9)):.2f}x)"
        )
    rate = med(lambda r: r["reader_mb_per_s"])
    print(
        f"reader: {rate:.1f} MB/s ({rate / args.rate_mb:.1f}x the write rate), tail reached "
        f"in {med(lambda r: r['time_to_tail_s']):.1f} s; all runs reached the tail: "
        f"{all(r['reached_tail'] for r in runs)}, in order: {all(r['in_order'] for r in runs)}"
    )
    for r in runs:
        print(
            f"  run: read {r['read_mb']} MB at {r['reader_mb_per_s']:.1f} MB/s, tail in "
            f"{r['time_to_tail_s']:.1f} s, write p95 {r['before']['p95_ms']:.2f} -> "
            f"{r['during']['p95_ms']:.2f} ms"
            + (f", control {r['control']['p95_ms']:.2f} ms" if r["control"] else "")
            + "; replies from LTS (of which as zstd frames)/cache/log: "
            + f"{r['sources']['lts']} ({r['sources']['lts_zstd']})/"
            + "/".join(str(r["sources"][k]) for k in ("cache", "log"))
            + f"; the worker's {r['commit_before']} -> {r['commit_during']} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
