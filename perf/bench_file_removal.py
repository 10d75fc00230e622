"""What removing a large preallocated file does to the other fdatasyncs of the file system.

A thread writes 256 KiB with O_DIRECT and fdatasyncs, in a loop (a journal's commit, in
small); meanwhile `--files` zero-filled files of `--file-mib` are removed one after another,
either with one `unlink` each or with `remove_in_steps` (dataplane/log/file_removal.py:
shrunk 4 MiB at a time, fsync and a pause after each step, then unlinked). Reported per
method: the loop's worst and p99 fdatasync latency while the files go, against its worst
before; medians over `--runs`, the two methods alternating.

    python perf/bench_file_removal.py [--runs 3] [--files 2] [--file-mib 256] [--dir DIR]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import tempfile
import threading
import time

from streamvault.dataplane.log.file_removal import remove_in_steps

WRITE_BYTES = 256 * 1024
LOOP_FILE_BYTES = 64 * 1024 * 1024


def _zero_filled(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        zeros = mmap.mmap(-1, 1024 * 1024)
        for pos in range(0, size, len(zeros)):
            os.pwrite(fd, zeros, pos)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_loop(path: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, WRITE_BYTES)
    pos = 0
    try:
        while not stop.is_set():
            start = time.monotonic()
            os.pwrite(fd, buf, pos)
            os.fdatasync(fd)
            out.append((start, time.monotonic() - start))
            pos = (pos + WRITE_BYTES) % LOOP_FILE_BYTES
    finally:
        os.close(fd)


def run_once(directory: str, method: str, files: int, file_bytes: int) -> dict:
    loop_file = os.path.join(directory, "loop")
    _zero_filled(loop_file, LOOP_FILE_BYTES)
    paths = [os.path.join(directory, f"victim{i}") for i in range(files)]
    for path in paths:
        _zero_filled(path, file_bytes)
    time.sleep(2.0)  # let the file system settle after the zero fill
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    thread = threading.Thread(target=_sync_loop, args=(loop_file, stop, samples))
    thread.start()
    try:
        time.sleep(1.0)
        begin = time.monotonic()
        for path in paths:
            if method == "unlink":
                os.unlink(path)
            else:
                remove_in_steps(path)
        end = time.monotonic() + 0.3  # a stall may land just after the last call returned
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        os.unlink(loop_file)
    before = [lat for t, lat in samples if t < begin]
    during = sorted(lat for t, lat in samples if begin <= t <= end)
    return {
        "before_max_ms": max(before) * 1e3,
        "during_max_ms": during[-1] * 1e3,
        "during_p99_ms": during[int(0.99 * (len(during) - 1))] * 1e3,
        "removal_s": end - 0.3 - begin,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--file-mib", type=int, default=256)
    ap.add_argument("--dir", default=None, help="directory on the file system to measure")
    args = ap.parse_args()
    if args.runs < 1 or args.files < 1 or args.file_mib < 1:
        ap.error("--runs, --files and --file-mib must be at least 1")
    directory = tempfile.mkdtemp(prefix="sv-removal-", dir=args.dir)
    results: dict[str, list[dict]] = {"unlink": [], "in steps": []}
    try:
        for _ in range(args.runs):
            for method in results:
                results[method].append(
                    run_once(directory, method, args.files, args.file_mib * 1024 * 1024)
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        f"{args.files} x {args.file_mib} MiB removed while 256 KiB O_DIRECT writes + fdatasync "
        f"loop; medians of {args.runs} runs"
    )
    for method, runs in results.items():

        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"{method:>9}: fdatasync worst {med('during_max_ms'):.1f} ms, p99 "
            f"{med('during_p99_ms'):.1f} ms while removing (worst before: "
            f"{med('before_max_ms'):.1f} ms); removal took {med('removal_s'):.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
