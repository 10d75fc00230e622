"""The bookie journal alone (issue: replicated durable log).

Measured, in one run, beside fio on the same file system:

- bandwidth: entries of `--sizes` (default 64 KiB and 1 MiB) staged a commit's worth at a
  time (as a busy bookie drains its socket; the journal writes the pieces while they are
  staged), then `commit()` (one fdatasync per commit of up to `commit_bytes_max`): payload
  MB/s in the steady state (after a warm-up, files are recycled, not created), as a ratio of
  fio's O_DIRECT sequential write bandwidth with 1 MiB blocks (no syncs) — target >= 0.8.
  "ratio" is median over median; "paired" the median of each measurement over the mean of
  the fio runs just before and just after it (this disk's bandwidth moves by 2x within
  minutes);
- commit rate: one 4 KiB entry per commit (the fdatasync-bound case): commits/s, as a
  ratio of the bare 4 KiB O_DIRECT pwrite + fdatasync loop in Python (the same syscalls
  without the journal; fio's buffered 4 KiB write + fdatasync rate is printed too).

Back of the envelope: here fio writes ~2.5 GB/s O_DIRECT and ~6-7 k fdatasyncs/s, so a
4 MiB commit costs ~1.6 ms of transfer plus ~0.15 ms of sync: ~90 % of the raw bandwidth is
the ceiling; Python adds one copy into the aligned buffer and a CRC32C per entry.

    python perf/bench_journal.py [--seconds 3] [--runs 3] [--dir DIR] [--sizes 65536,1048576]
        [--gaps]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402
from bench_append import machine  # noqa: E402

from streamvault.dataplane.log.disk import OsDisk  # noqa: E402
from streamvault.dataplane.log.journal import Journal, JournalConfig  # noqa: E402

LOOPS_MAX = 10_000_000


class TimedDisk(OsDisk):
    """The real disk, timing each pwrite and fdatasync (`--gaps`)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float, float]] = []  # (op, start, end)

    def pwrite(self, handle: int, data, pos: int) -> int:
        start = time.perf_counter()
        written = super().pwrite(handle, data, pos)
        self.calls.append(("pwrite", start, time.perf_counter()))
        return written

    def fdatasync(self, handle: int) -> None:
        start = time.perf_counter()
        super().fdatasync(handle)
        self.calls.append(("fdatasync", start, time.perf_counter()))

    def report(self, elapsed: float) -> str:
        """The disk calls' share of the steady state, and the gaps between them (the I/O
        side waiting for the caller): after a sync (the next commit being staged) and
        between two pieces."""
        calls = self.calls
        busy = {
            op: sum(b - a for o, a, b in calls if o == op) / elapsed
            for op in ("pwrite", "fdatasync")
        }
        after_sync = [
            calls[i + 1][1] - calls[i][2]
            for i in range(len(calls) - 1)
            if calls[i][0] == "fdatasync"
        ]
        between = [
            calls[i + 1][1] - calls[i][2]
            for i in range(len(calls) - 1)
            if calls[i][0] == calls[i + 1][0] == "pwrite"
        ]
        idle = 1 - sum(busy.values())
        med = lambda xs: statistics.median(xs) * 1e3 if xs else 0.0  # noqa: E731
        return (
            f"pwrite {busy['pwrite']:.0%}, fdatasync {busy['fdatasync']:.0%}, idle {idle:.0%}; "
            f"gap after a sync median {med(after_sync):.3f} ms ({sum(after_sync) / elapsed:.0%}), "
            f"between pieces {med(between):.3f} ms ({sum(between) / elapsed:.0%})"
        )


def bandwidth(
    directory: str, size: int, seconds: float, config: JournalConfig, disk: TimedDisk | None = None
) -> float:
    """Payload MB/s of entries of `size` bytes committed a commit's worth at a time, in the
    steady state: first `warmup` bytes are written (ledgers deleted as they go) so that the
    journal recycles its files instead of creating (zero-filling) new ones. With `disk`,
    its timings cover the steady state only."""
    path = tempfile.mkdtemp(prefix="journal-", dir=directory)
    journal = Journal(path, config, disk=disk)
    payload = os.urandom(size)
    per_commit = max(1, config.commit_bytes_max // (size + 64))
    warmup = (config.files_recycled_max + 2) * config.file_bytes
    try:
        written = 0
        entry = 0
        ledger = 1
        start = time.perf_counter()
        for _ in range(LOOPS_MAX):
            if warmup and written >= warmup:
                warmup, written, start = 0, 0, time.perf_counter()
                if disk is not None:
                    disk.calls.clear()
            if not warmup and time.perf_counter() - start >= seconds:
                break
            for _ in range(per_commit):
                journal.add_entry(
                    ledger, entry, epoch=1, lac=entry - 1, payload=payload, token=None
                )
                entry += 1
            journal.commit()
            written += per_commit * size
            if entry * size >= config.file_bytes // 4:  # delete the ledger, go on in the next
                journal.delete_ledger(ledger, token=None)
                journal.commit()
                ledger += 1
                entry = 0
        elapsed = time.perf_counter() - start
        if disk is not None:
            rate = written / elapsed / 1e6
            print(f"  {size // 1024} KiB entries, {rate:,.0f} MB/s: {disk.report(elapsed)}")
        return written / elapsed / 1e6
    finally:
        journal.close()
        shutil.rmtree(path, ignore_errors=True)


def commit_rate(directory: str, seconds: float, config: JournalConfig) -> float:
    """Commits/s with one 4 KiB entry per commit."""
    path = tempfile.mkdtemp(prefix="journal-", dir=directory)
    journal = Journal(path, config)
    payload = os.urandom(4096 - 64)
    try:
        commits = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and commits < LOOPS_MAX:
            journal.add_entry(1, commits, epoch=1, lac=commits - 1, payload=payload, token=None)
            journal.commit()
            commits += 1
        return commits / (time.perf_counter() - start)
    finally:
        journal.close()
        shutil.rmtree(path, ignore_errors=True)


def fio_figures(directory: str, seconds: float) -> tuple[float | None, float | None, str]:
    result = baselines.disk_fio(directory, seconds)
    if not result.get("available"):
        return None, None, result.get("reason", "fio unavailable")
    by_metric = {m["metric"]: m for m in result["measurements"]}
    bw = by_metric.get("fio seq write bs=1M O_DIRECT", {}).get("mb_per_s")
    syncs = by_metric.get("fio 4k write + fdatasync (buffered)", {}).get("syncs_per_s")
    return bw, syncs, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="file system to measure (default: temp dir)")
    ap.add_argument("--sizes", default="65536,1048576")
    ap.add_argument(
        "--gaps",
        action="store_true",
        help="only time the journal's disk calls in the bandwidth runs: their share, and the "
        "gaps in which the I/O side waits for the caller",
    )
    args = ap.parse_args()
    directory = args.dir or tempfile.gettempdir()
    config = JournalConfig(file_bytes=128 << 20)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.gaps:
        for _ in range(args.runs):
            for size in sizes:
                bandwidth(directory, size, args.seconds, config, TimedDisk())
        return 0
    rows: dict[str, list[float]] = {f"journal {s // 1024} KiB entries MB/s": [] for s in sizes}
    rows["journal 4 KiB commits/s"] = []
    bracketed: dict[str, list[float]] = {name: [] for name in rows}
    fio_bw: list[float] = []
    fio_syncs: list[float] = []
    bare_syncs: list[float] = []
    for _ in range(args.runs):  # interleaved with fio, so drift hits both alike
        bw, syncs, why = fio_figures(directory, args.seconds)
        if bw:
            fio_bw.append(bw)
        if syncs:
            fio_syncs.append(syncs)
        bare = baselines.fdatasync_rate(directory, args.seconds)
        if bare.get("available"):
            bare_syncs.append(bare["measurements"][0]["syncs_per_s"])
        before = baselines.fio_seq_write_mb(directory, args.seconds)
        for size in sizes:  # each bracketed by fio runs: the disk drifts within seconds
            mb_s = bandwidth(directory, size, args.seconds, config)
            after = baselines.fio_seq_write_mb(directory, args.seconds)
            name = f"journal {size // 1024} KiB entries MB/s"
            rows[name].append(mb_s)
            if before and after:
                bracketed[name].append(mb_s / ((before + after) / 2))
            before = after
        rows["journal 4 KiB commits/s"].append(commit_rate(directory, args.seconds, config))
    m = machine()
    probe = Journal(tempfile.mkdtemp(prefix="journal-", dir=directory), config)
    mode = probe.durability_mode
    probe.close()
    shutil.rmtree(probe.directory, ignore_errors=True)
    print(f"machine: {m['cpu']} x{m['cores']}, python {m['python']}, commit {m['commit']}")
    print(f"journal in {directory}: {mode}, commit_bytes_max={config.commit_bytes_max}")
    base_bw = statistics.median(fio_bw) if fio_bw else None
    base_syncs = statistics.median(bare_syncs) if bare_syncs else None
    fio_sync_rate = statistics.median(fio_syncs) if fio_syncs else 0
    print(f"{'measurement':<36}{'median':>12}  {'ratio':>8}  {'paired':>8}  runs")
    for name, values in rows.items():
        value = statistics.median(values)
        base = base_syncs if "commits" in name else base_bw
        ratio = f"{value / base:.2f}" if base else "-"
        # each run's figure over the baseline measured next to it (drift cancels): the
        # bandwidth over the mean of the fio runs just before and just after it, the commit
        # rate over the bare loop measured just before it
        if "commits" in name:
            pairs = [v / b for v, b in zip(values, bare_syncs, strict=False) if b]
        else:
            pairs = bracketed[name]
        paired = f"{statistics.median(pairs):.2f}" if len(pairs) == len(values) else "-"
        print(f"{name:<36}{value:>12,.1f}  {ratio:>8}  {paired:>8}  {[round(v) for v in values]}")
    for name, value, runs in (
        ("fio seq write 1M O_DIRECT MB/s", base_bw or 0, fio_bw),
        ("python 4k O_DIRECT+fdatasync /s", base_syncs or 0, bare_syncs),
        ("fio 4k write+fdatasync syncs/s", fio_sync_rate, fio_syncs),
    ):
        print(f"{name:<36}{value:>12,.1f}  {'base':>8}  {'':>8}  {runs}")
    if not fio_bw:
        print(f"(fio: {why})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
