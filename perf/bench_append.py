"""Append throughput and ack latency of one Python writer (DESIGN.md §4, issue: foundation).

Back of the envelope: 100-byte events framed to 104 bytes; 1 M events/s is ~104 MB/s of log
writes, far below the disk's O_DIRECT bandwidth, and with one fdatasync per group commit
(~0.2 ms here) a commit cycle every millisecond carries ~1000 events. The limit is CPU: two
cores shared by the writer process and the worker, so the client must frame per block and
the server must not touch events one by one.

Runs (each `--seconds`, repeated `--runs` times, median reported):
- `write_events`: lists of `--batch` events per call, one routing key per call;
- `write_event`: one event per call;
- `write_events@<rate>`: the same calls paced at `--rate` events/s (default 1 M/s): ack
  latency at a fixed offered load, measured from each call's scheduled time. A saturating
  producer's latency is mostly its own queue (writer buffer / throughput); the paced run
  shows what an application sending at that rate sees.
Latency is from the call until its future completes (acked = durable, fdatasync'd).
Beside them, in the same session: the bare append path's limit and Redis 7 with
`appendfsync always` (perf/baselines.py), and the disk's fdatasync rate.

    python perf/bench_append.py [--controller URL] [--seconds 5] [--runs 3] [--json]
        [--replicas 3 --ack-quorum 2] [--buffer-mib B] [--in-flight-mib F] [--batch-kib K]

The writer's window (buffer, in flight, batch) is printed with the results. A window larger
than throughput x the servers' round trip only queues: latency grows, throughput does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from streamvault.client import StreamManager, WriterConfig  # noqa: E402

CONFIG: WriterConfig | None = None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {
        "p50_ms": pick(0.5),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": ordered[-1] * 1e3,
    }


def start_standalone(
    data_dir: str, workers: int, extra: list[str] | None = None, port: int = 0
) -> tuple[subprocess.Popen, str]:
    import socket

    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamvault.tools.cli",
            "standalone",
            "--data-dir",
            data_dir,
            "--port",
            str(port),
            "--ephemeral-ports",
            "--log-level",
            "WARNING",
            *(["--workers", str(workers)] if workers else []),
            *(extra or []),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "streamvault ready" not in line:
        proc.kill()
        raise SystemExit(f"standalone did not start: {line!r}")
    return proc, f"tcp://127.0.0.1:{port}"


def stop_standalone(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not stopped in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def run_write_events(
    mgr,
    scope: str,
    stream: str,
    seconds: float,
    batch: int,
    size: int,
    keys: int,
    rate: float = 0.0,
) -> dict:
    """Calls of `batch` events as fast as they are admitted, or with `rate` (events/s) paced:
    the call for events i*batch.. is made at start + i*batch/rate, and its latency counts
    from that scheduled time (so a stall delays the schedule's latencies instead of hiding
    them: no coordinated omission)."""
    events = [os.urandom(size) for _ in range(batch)]
    latencies: list[float] = []
    interval = batch / rate if rate else 0.0
    with mgr.create_writer(scope, stream, config=CONFIG) as writer:
        writer.write_events(events[:10], routing_key="warmup").result(30)
        calls = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if interval:
                t0 = start + calls * interval
                if (delay := t0 - time.perf_counter()) > 0:
                    # one sleep, no spinning: a spinning caller takes the GIL from the
                    # writer's I/O thread and a core from the servers on a small machine
                    time.sleep(delay)
            else:
                t0 = time.perf_counter()
            future = writer.write_events(events, routing_key=f"k{calls % keys}")
            future.add_done_callback(lambda f, t0=t0: latencies.append(time.perf_counter() - t0))
            calls += 1
        writer.flush()
        elapsed = time.perf_counter() - start
    total = calls * batch
    return {
        "api": f"write_events@{rate / 1e6:g}M/s" if rate else "write_events",
        "events": total,
        "events_per_s": total / elapsed,
        "mb_per_s": total * size / elapsed / 1e6,
        **percentiles(latencies),
    }


def run_write_event(
    mgr, scope: str, stream: str, seconds: float, size: int, keys: int, sample_every: int = 64
) -> dict:
    payload = os.urandom(size)
    latencies: list[float] = []
    key_names = [f"k{i}" for i in range(keys)]
    with mgr.create_writer(scope, stream, config=CONFIG) as writer:
        writer.write_event(payload, routing_key="warmup").result(30)
        write = writer.write_event
        count = 0
        now = time.perf_counter
        start = now()
        deadline = start + seconds
        while True:
            for i in range(sample_every - 1):
                write(payload, key_names[i % keys])
            t0 = now()
            future = write(payload, key_names[0])
            future.add_done_callback(lambda f, t0=t0: latencies.append(now() - t0))
            count += sample_every
            if t0 >= deadline:
                break
        writer.flush()
        elapsed = now() - start
    return {
        "api": "write_event",
        "events": count,
        "events_per_s": count / elapsed,
        "mb_per_s": count * size / elapsed / 1e6,
        **percentiles(latencies),
    }


def stages(mgr) -> str:
    """Where the servers' time went, from their status (client/protocol/latency.py): p50,
    p95 and max in ms of each stage a worker or bookie timed, over its last samples (a few
    seconds at these rates), after waiting a heartbeat for them to arrive."""
    from streamvault.tools.status import stage_line

    time.sleep(1.2)
    parts = []
    for p in sorted(mgr.status().processes, key=lambda p: (p.role, p.id)):
        info = p.info if p.role in ("worker", "bookie") and isinstance(p.info, dict) else {}
        if line := stage_line(info.get("latency_ms")):
            parts.append(f"{p.role} {p.id}: {line}")
    return "; ".join(parts)


def median_of(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("events_per_s", "mb_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"):
        out[key] = statistics.median(r[key] for r in runs)
    out["runs"] = [round(r["events_per_s"]) for r in runs]
    return out


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit or "unknown",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--controller", help="use a running cluster instead of starting one")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--event-bytes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000, help="events per write_events call")
    ap.add_argument("--segments", type=int, default=1)
    ap.add_argument("--keys", type=int, default=1, help="routing keys cycled over")
    ap.add_argument(
        "--buffer-mib",
        type=float,
        default=0,
        help="writer buffer_bytes_max in MiB (default: the writer's default)",
    )
    ap.add_argument(
        "--in-flight-mib",
        type=float,
        default=0,
        help="writer in_flight_bytes_max in MiB (default: half of --buffer-mib, if given)",
    )
    ap.add_argument(
        "--batch-kib",
        type=float,
        default=0,
        help="writer batch_bytes_max in KiB (default: a quarter of --buffer-mib, if given)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=1e6,
        help="also run write_events paced at this many events/s (latency at a fixed load; 0: no)",
    )
    ap.add_argument(
        "--standalone-args", default="", help="extra options for the standalone it starts"
    )
    ap.add_argument(
        "--replicas", type=int, default=0, help="bookies of the standalone (0: one embedded)"
    )
    ap.add_argument("--ack-quorum", type=int, default=0)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    global CONFIG
    if args.buffer_mib or args.in_flight_mib or args.batch_kib:
        default = WriterConfig()
        buffer = int(args.buffer_mib * 1024 * 1024) or default.buffer_bytes_max
        in_flight = int(args.in_flight_mib * 1024 * 1024) or (
            max(buffer // 2, 512 * 1024) if args.buffer_mib else default.in_flight_bytes_max
        )
        batch = int(args.batch_kib * 1024) or (
            min(512 * 1024, buffer // 4) if args.buffer_mib else default.batch_bytes_max
        )
        CONFIG = WriterConfig(
            buffer_bytes_max=buffer, in_flight_bytes_max=in_flight, batch_bytes_max=batch
        )
    tmp = tempfile.mkdtemp(prefix="sv-bench-")
    proc = None
    controller = args.controller
    try:
        if controller is None:
            extra = args.standalone_args.split()
            if args.replicas:
                extra += ["--replicas", str(args.replicas)]
            if args.ack_quorum:
                extra += ["--ack-quorum", str(args.ack_quorum)]
            proc, controller = start_standalone(os.path.join(tmp, "data"), args.workers, extra)
        with StreamManager(controller) as mgr:
            scope, stream = "bench", f"append{os.getpid()}"
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=args.segments)
            workers = [p for p in mgr.status().processes if p.role == "worker"]
            mode = workers[0].info.get("durability_mode", "?") if workers else "?"
            replication = "RF=1"
            bookies = [p for p in mgr.status().processes if p.role == "bookie"]
            if bookies:  # the workers replicate; the bookies' journals are what syncs
                replication, mode = mode, bookies[0].info.get("durability_mode", "?")
            results = {"write_events": [], "write_event": [], "paced": []}
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                results["write_events"].append(
                    run_write_events(
                        mgr, scope, stream, args.seconds, args.batch, args.event_bytes, args.keys
                    )
                )
                results["write_event"].append(
                    run_write_event(mgr, scope, stream, args.seconds, args.event_bytes, args.keys)
                )
                if args.rate:
                    results["paced"].append(
                        run_write_events(
                            mgr,
                            scope,
                            stream,
                            args.seconds,
                            args.batch,
                            args.event_bytes,
                            args.keys,
                            rate=args.rate,
                        )
                    )
        ours = [median_of(runs) for runs in results.values() if runs]
    finally:
        if proc is not None:
            stop_standalone(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    baselines: list[dict] = []
    if not args.no_baselines:
        import baselines as peers

        baselines = peers.run_all(None, seconds=min(args.seconds, 3.0))
    report = {
        "machine": machine(),
        "durability_mode": mode,
        "replication": replication,
        "event_bytes": args.event_bytes,
        "batch": args.batch,
        "segments": args.segments,
        "workers": len(workers),
        "writer": {
            name: getattr(CONFIG or WriterConfig(), name)
            for name in ("buffer_bytes_max", "in_flight_bytes_max", "batch_bytes_max")
        },
        "streamvault": ours,
        "baselines": baselines,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"machine: {m['cpu']} x{m['cores']}, python {m['python']}, commit {m['commit']}")
    print(
        f"streamvault: {report['replication']}, durability={report['durability_mode']}, "
        f"workers={report['workers']}, segments={report['segments']}, "
        f"{report['event_bytes']} B events, write_events batch={report['batch']}"
    )
    w = report["writer"]
    print(
        f"writer: buffer {w['buffer_bytes_max'] / 2**20:g} MiB, in flight "
        f"{w['in_flight_bytes_max'] / 2**20:g} MiB, batch {w['batch_bytes_max'] / 2**10:g} KiB"
    )
    print(
        f"{'api':<20}{'events/s':>12}{'MB/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}  runs"
    )
    for r in report["streamvault"]:
        print(
            f"{r['api']:<20}{r['events_per_s']:>12,.0f}{r['mb_per_s']:>8.1f}{r['p50_ms']:>9.2f}"
            f"{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}  {r['runs']}"
        )
    if report["baselines"]:
        import baselines as peers

        print("baselines (same session):")
        print(peers.render(report["baselines"]))
        bare = peers.rate_of(report["baselines"], "bare", "events_per_s")
        redis = peers.rate_of(report["baselines"], "redis-benchmark", "requests_per_s")
        for r in report["streamvault"]:
            ratios = []
            if bare:
                ratios.append(f"{r['events_per_s'] / bare:.2f}x the bare append path")
            if redis:
                ratios.append(f"{r['events_per_s'] / redis:.1f}x Redis XADD (appendfsync always)")
            if ratios:
                print(f"{r['api']}: " + ", ".join(ratios))


if __name__ == "__main__":
    raise SystemExit(main())
