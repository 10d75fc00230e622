"""What an idle container costs the bookies' shared journal (issue: replicated durable log).

One stream gets `--idle-mb` and then nothing (its container goes idle); a second stream is
then written at `--rate-mb` MB/s for `--seconds`, all on one RF=3 cluster (`--replicas 3
--ack-quorum 2`). The bookies' counters show what the journal wrote beyond the entries:
- `relocated`: bytes compaction copied forward (live records of an old file);
- `zero-filled`: journal files zero-filled as spares (`files_spare`) times the file size:
  every rollover that finds no freed file to recycle writes a whole file of zeros;
- `trashed`: freed files removed because the free pool was full (`files_deleted`).
Each is printed as a share of the bytes the second stream wrote, with the second writer's
ack p95 (paced calls of 1000 x 1000-byte events, latency from each call's scheduled time).

    python perf/bench_idle_container.py [--idle-mb 100] [--rate-mb 60] [--seconds 60]
        [--standalone-args "..."]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_append as bench  # noqa: E402

from streamvault.client import StreamManager  # noqa: E402

EVENT_BYTES = 1000
BATCH = 1000


def bookie_counters(mgr) -> list[dict]:
    return [p.info for p in mgr.status().processes if p.role == "bookie"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-mb", type=int, default=100)
    parser.add_argument("--rate-mb", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--standalone-args", default="")
    args = parser.parse_args()
    extra = ["--replicas", "3", "--ack-quorum", "2", *args.standalone_args.split()]
    tmp = tempfile.mkdtemp(prefix="sv-bench-")
    proc = None
    try:
        proc, controller = bench.start_standalone(os.path.join(tmp, "data"), 0, extra)
        with StreamManager(controller) as mgr:
            mgr.create_scope("bench")
            mgr.create_stream("bench", "idle", initial_segments=1)
            mgr.create_stream("bench", "busy", initial_segments=1)
            events = [os.urandom(EVENT_BYTES) for _ in range(BATCH)]
            with mgr.create_writer("bench", "idle") as writer:
                for _ in range(args.idle_mb * 1_000_000 // (EVENT_BYTES * BATCH)):
                    writer.write_events(events, routing_key="k")
                writer.flush()
            before = bookie_counters(mgr)
            rate = args.rate_mb * 1e6 / EVENT_BYTES  # events/s
            busy = bench.run_write_events(
                mgr, "bench", "busy", args.seconds, BATCH, EVENT_BYTES, 1, rate=rate
            )
            after = bookie_counters(mgr)
    finally:
        if proc is not None:
            bench.stop_standalone(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    written = busy["events"] * EVENT_BYTES
    p95 = busy["p95_ms"]
    print(
        f"idle stream {args.idle_mb} MB, then {written / 1e6:.0f} MB at {args.rate_mb:g} MB/s "
        f"over {args.seconds:g} s (RF=3, 1000 B events); writer p95 {p95:.1f} ms"
    )
    print("bookie  relocated MB (share)  zero-filled MB (share)  trashed files  recycled files")
    size = journal_file_bytes(args.standalone_args)
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        relocated = a["bytes_relocated"] - b["bytes_relocated"]
        spares = a["files_spare"] - b["files_spare"]
        print(
            f"{i:>6}  {relocated / 1e6:8.0f} ({relocated / written:5.1%})"
            f"  {spares * size / 1e6:10.0f} ({spares * size / written:5.1%})"
            f"  {a['files_deleted'] - b['files_deleted']:13d}"
            f"  {a['files_recycled'] - b['files_recycled']:14d}"
        )
    return 0


def journal_file_bytes(standalone_args: str) -> int:
    """The journal file size the cluster was started with (`--journal-file-size`)."""
    from streamvault.client.protocol.sizes import parse_size

    words = standalone_args.split()
    if "--journal-file-size" in words:
        return parse_size(words[words.index("--journal-file-size") + 1])
    return 256 * 1024 * 1024


if __name__ == "__main__":
    sys.exit(main())
