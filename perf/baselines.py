"""Reference numbers for perf/bench_append.py, measured on this machine in the same run.

Our append numbers mean little alone, so the benchmark reports beside them what this disk, this
CPU and well-known software do here (one writer, 100-byte events, acked only once durable):

- ``disk_fio``: fio O_DIRECT sequential write MB/s (1 MiB and 64 KiB blocks) and the rate and
  latency of 4 KiB write + fdatasync: the cost of one group commit.
- ``fdatasync_rate``: that commit as Python sees it (4 KiB O_DIRECT pwrite + os.fdatasync).
- ``bare_append_limit``: the bare design without streamvault's code: a DEALER framing events
  per block (4-byte LE length + payload) with a window of blocks in flight to a ROUTER process
  that drains its queue, writes it all with one O_DIRECT pwrite, fdatasyncs once and acks each
  block. The gap between this and streamvault is our own overhead.
- ``redis_xadd``: Redis XADD with ``appendfsync always`` via redis-benchmark (C client, 100 per
  pipeline; it does not expand ``__data__`` in custom commands, so a literal 100-byte value is
  sent) and via redis-py pipelines of 100 and 1000.

Each function returns a JSON-serialisable dict ``{"name", "available", ...}``; a missing or
failing tool gives ``available: False`` and a ``reason``, never an exception. Results are in
``measurements``, whose keys carry their unit (``events_per_s``, ``p50_us``, ``p95_ms``...).
MB/s is 10**6 B/s of event payload, as in bench_append. Percentiles are nearest-rank.

    python perf/baselines.py [--seconds S] [--json] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import math
import mmap
import multiprocessing as mp
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

Result = dict[str, Any]
PAGE = 4096
LOOPBACK = "127.0.0.1"
_LEN = struct.Struct("<I")
_MAX_LOOPS = 50_000_000  # count bound of every loop, beside its time bound
_STREAM = "streamvaultbench"
_VALUE = "v" * 100


def _unavailable(name: str, reason: str) -> Result:
    return {"name": name, "available": False, "reason": reason}


def _percentiles(values: list[float], scale: float, unit: str) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) of ``values`` times ``scale``, keyed ``p50_<unit>`` etc."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for q in (50, 95, 99):
        rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
        out[f"p{q}_{unit}"] = round(ordered[rank] * scale, 3) if ordered else 0.0
    return out


class _LogFile:
    """A preallocated scratch file written at wrapping offsets, with O_DIRECT when allowed."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size, self.offset, self.fd = path, size, 0, -1
        with open(path, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError:
                f.truncate(size)
            os.fsync(f.fileno())
        self.direct, self.mode = hasattr(os, "O_DIRECT"), "buffered (no O_DIRECT on this OS)"
        if self.direct:
            try:
                self.fd, self.mode = os.open(path, os.O_RDWR | os.O_DIRECT), "O_DIRECT"
            except OSError as exc:
                self._buffered(f"O_DIRECT open refused: {exc.strerror}")
        else:
            self.fd = os.open(path, os.O_RDWR)

    def _buffered(self, why: str) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.direct, self.mode = os.open(self.path, os.O_RDWR), False, f"buffered ({why})"

    def append(self, data: memoryview) -> None:
        """pwrite ``data`` (whole pages of an aligned buffer) at the next offset."""
        if self.offset + len(data) > self.size:
            self.offset = 0
        try:
            os.pwrite(self.fd, data, self.offset)
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            self._buffered(f"O_DIRECT write refused: {exc.strerror}")
            os.pwrite(self.fd, data, self.offset)
        self.offset += len(data)


def _fio(path: str, seconds: float, *options: str) -> dict[str, Any]:
    """Run one time-bounded fio job writing ``path``; return its json job record."""
    cmd = [
        "fio",
        "--name=streamvault-baseline",
        f"--filename={path}",
        "--rw=write",
        "--ioengine=psync",
        f"--runtime={max(100, int(seconds * 1000))}ms",
        "--time_based",
        "--output-format=json",
        *options,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0 or "{" not in out.stdout:
        raise RuntimeError(f"fio exited {out.returncode}: {out.stderr.strip()[-300:]}")
    job: dict[str, Any] = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]
    return job


def _fio_sync(job: dict[str, Any]) -> Result:
    """syncs/s and fdatasync latency from fio's "sync" section, else derived from write iops."""
    lat, secs = job.get("sync", {}).get("lat_ns", {}), job["job_runtime"] / 1000
    if not lat.get("N"):
        iops = float(job["write"]["iops"])
        return {
            "syncs_per_s": round(iops, 1),
            "mean_us": round(1e6 / max(iops, 1e-9), 1),
            "source": "write iops (fio reported no sync latencies)",
        }
    pct = lat.get("percentile", {})
    return {
        "syncs_per_s": round(lat["N"] / secs, 1),
        **{f"p{q}_us": round(pct.get(f"{q}.000000", 0) / 1000, 1) for q in (50, 95)},
        "source": "fio sync lat_ns (the fdatasync call alone)",
    }


def disk_fio(directory: str, seconds: float = 3.0) -> Result:
    """fio: O_DIRECT sequential write MB/s (bs 1M and 64k) and 4k write+fdatasync rate."""
    if shutil.which("fio") is None:
        return _unavailable("disk_fio", "fio not on PATH")
    jobs = [
        ("fio seq write bs=1M O_DIRECT", ["--bs=1M", "--direct=1", "--size=256M"]),
        ("fio seq write bs=64k O_DIRECT", ["--bs=64k", "--direct=1", "--size=256M"]),
        ("fio 4k write + fdatasync (buffered)", ["--bs=4k", "--fdatasync=1", "--size=64M"]),
    ]
    tmp = tempfile.mkdtemp(prefix="fio-", dir=directory)
    measurements: list[Result] = []
    try:
        for metric, options in jobs:
            try:
                job = _fio(os.path.join(tmp, "scratch.dat"), seconds, *options)
                w = job["write"]
                measurements.append(
                    {
                        "metric": metric,
                        **(
                            _fio_sync(job)
                            if "--fdatasync=1" in options
                            else {
                                "mb_per_s": round(w["bw_bytes"] / 1e6, 1),
                                "iops": round(w["iops"], 1),
                            }
                        ),
                    }
                )
            except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as e:
                measurements.append({"metric": metric, "available": False, "reason": repr(e)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"name": "disk_fio", "available": True, "measurements": measurements}


def fio_seq_write_mb(directory: str, seconds: float = 2.0) -> float | None:
    """fio O_DIRECT sequential write MB/s with 1 MiB blocks alone (None without fio): the
    bandwidth baseline, cheap enough to measure right next to each measurement."""
    if shutil.which("fio") is None:
        return None
    tmp = tempfile.mkdtemp(prefix="fio-", dir=directory)
    try:
        job = _fio(
            os.path.join(tmp, "scratch.dat"), seconds, "--bs=1M", "--direct=1", "--size=256M"
        )
        return round(job["write"]["bw_bytes"] / 1e6, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fdatasync_rate(directory: str, seconds: float = 2.0) -> Result:
    """Pure Python: 4 KiB O_DIRECT pwrite + os.fdatasync in a loop; syncs/s and latency."""
    tmp = tempfile.mkdtemp(prefix="fdatasync-", dir=directory)
    buf = mmap.mmap(-1, PAGE)  # anonymous mmap: page-aligned, as O_DIRECT requires
    lat: list[float] = []
    try:
        log = _LogFile(os.path.join(tmp, "sync.dat"), 64 << 20)
        try:
            with memoryview(buf) as view:
                t0 = time.perf_counter()
                for _ in range(_MAX_LOOPS):
                    start = time.perf_counter()
                    if start >= t0 + seconds:
                        break
                    log.append(view)
                    os.fdatasync(log.fd)
                    lat.append(time.perf_counter() - start)
                elapsed = time.perf_counter() - t0
        finally:
            os.close(log.fd)
    except OSError as exc:
        return _unavailable("fdatasync_rate", f"I/O error: {exc!r}")
    finally:
        buf.close()
        shutil.rmtree(tmp, ignore_errors=True)
    m = {
        "metric": f"python pwrite 4k {log.mode} + fdatasync",
        "syncs_per_s": round(len(lat) / elapsed, 1),
        **_percentiles(lat, 1e6, "us"),
    }
    return {"name": "fdatasync_rate", "available": True, "mode": log.mode, "measurements": [m]}


def _serve(
    zmq: Any,
    sock: Any,
    log: _LogFile,
    view: memoryview,
    window: int,
    stats: dict[str, Any],
    deadline: float,
) -> None:
    """Drain the queue (at most ``window`` blocks are in flight), one pwrite, one fdatasync."""
    for _ in range(_MAX_LOOPS):
        if time.monotonic() > deadline:
            return
        if not sock.poll(100):
            continue
        msgs = [sock.recv_multipart(copy=False)]
        with contextlib.suppress(zmq.Again):
            for _ in range(window):
                msgs.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
        blocks = [m for m in msgs if len(m) == 3]  # [identity, block id, payload]
        size = 0
        for _ident, _key, payload in blocks:
            view[size : size + len(payload)] = payload.buffer
            size += len(payload)
        if blocks:
            padded = -(-size // PAGE) * PAGE
            view[size:padded] = bytes(padded - size)
            log.append(view[:padded])
            os.fdatasync(log.fd)
            for ident, key, _payload in blocks:
                sock.send_multipart([ident, key], copy=False)
            stats["commits"] += 1
            stats["blocks"] += len(blocks)
        if len(blocks) < len(msgs):  # [identity, b"stop"]
            return


def _bare_server(
    conn: Connection, path: str, file_size: int, window: int, buf_size: int, limit_s: float
) -> None:
    """Child process: a ROUTER on an ephemeral loopback port serving ``_serve``."""
    stats: dict[str, Any] = {"commits": 0, "blocks": 0}
    try:
        import zmq

        log = _LogFile(path, file_size)
        buf = mmap.mmap(-1, buf_size)
        try:
            with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock, memoryview(buf) as view:
                sock.setsockopt(zmq.LINGER, 0)
                conn.send({"port": sock.bind_to_random_port(f"tcp://{LOOPBACK}")})
                _serve(zmq, sock, log, view, window, stats, time.monotonic() + limit_s)
        finally:
            stats["mode"] = log.mode
            os.close(log.fd)
            buf.close()
    except Exception as exc:  # reported to the parent, which turns it into a result
        stats["error"] = repr(exc)
    conn.send(stats)


def _bare_client(
    zmq: Any, port: int, seconds: float, events: list[bytes], window: int
) -> tuple[list[float], float]:
    """DEALER keeping ``window`` blocks in flight; returns ack latencies and elapsed seconds."""
    lat: list[float] = []
    inflight: dict[bytes, float] = {}
    seq = 0
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(f"tcp://{LOOPBACK}:{port}")
        t0 = last = time.perf_counter()
        deadline = t0 + seconds
        for _ in range(_MAX_LOOPS):
            now = time.perf_counter()
            if now >= deadline and (not inflight or now >= deadline + 5.0):
                break
            while now < deadline and len(inflight) < window:
                start = time.perf_counter()
                block = b"".join([part for e in events for part in (_LEN.pack(len(e)), e)])
                key = seq.to_bytes(8, "little")
                seq += 1
                inflight[key] = start
                sock.send_multipart([key, block], copy=False)
            if sock.poll(50):
                with contextlib.suppress(zmq.Again):
                    for _ in range(window):
                        key = sock.recv(zmq.NOBLOCK)
                        last = time.perf_counter()
                        lat.append(last - inflight.pop(key))
        sock.send(b"stop")
    return lat, last - t0


def _stop_process(proc: BaseProcess) -> None:
    if proc.pid is None:
        return
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
        proc.join(3)
    if proc.is_alive():
        proc.kill()
        proc.join(3)


def bare_append_limit(
    directory: str,
    seconds: float = 3.0,
    events_per_block: int = 1000,
    window: int = 8,
    event_bytes: int = 100,
) -> Result:
    """The bare design's limit: DEALER -> ROUTER child, one O_DIRECT write+fdatasync per drain."""
    name = "bare_append_limit"
    try:
        import zmq
    except ImportError as exc:
        return _unavailable(name, f"pyzmq not importable: {exc}")
    block_bytes = events_per_block * (_LEN.size + event_bytes)
    buf_size = -(-(window * block_bytes) // PAGE) * PAGE + PAGE
    tmp = tempfile.mkdtemp(prefix="bare-", dir=directory)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_bare_server,
        daemon=True,
        name="baseline-bare-server",
        args=(child, os.path.join(tmp, "log.dat"), 256 << 20, window, buf_size, seconds + 30.0),
    )
    try:
        proc.start()
        child.close()
        hello = parent.recv() if parent.poll(30) else {"error": "server did not start in 30 s"}
        if "port" not in hello:
            return _unavailable(name, f"server failed: {hello.get('error')}")
        events = [os.urandom(event_bytes) for _ in range(events_per_block)]
        lat, elapsed = _bare_client(zmq, hello["port"], seconds, events, window)
        stats = parent.recv() if parent.poll(10) else {"error": "no stats from server"}
    except (OSError, EOFError, zmq.ZMQError) as exc:
        return _unavailable(name, f"error: {exc!r}")
    finally:
        _stop_process(proc)
        parent.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if not lat or "error" in stats:
        return _unavailable(name, f"no blocks acked; server: {stats.get('error')}")
    n_events = len(lat) * events_per_block
    m = {
        "metric": f"bare {events_per_block}x{event_bytes}B blocks, window {window}, "
        f"{stats['mode']}",
        "events_per_s": round(n_events / elapsed, 1),
        "mb_per_s": round(n_events * event_bytes / elapsed / 1e6, 2),
        "blocks_per_s": round(len(lat) / elapsed, 1),
        "commits_per_s": round(stats["commits"] / elapsed, 1),
        "blocks_per_commit": round(stats["blocks"] / max(1, stats["commits"]), 2),
        **_percentiles(lat, 1e3, "ms"),
    }
    return {"name": name, "available": True, "mode": stats["mode"], "measurements": [m]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _resp(port: int, *args: str) -> bytes:
    """Send one RESP command, return the start of the reply (enough for PING and DEL)."""
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((LOOPBACK, port), timeout=2.0) as s:
        s.sendall(cmd.encode())
        return s.recv(256)


def _stop_popen(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start_redis(tmp: str, procs: list[subprocess.Popen[bytes]]) -> int:
    """Start redis-server (AOF, fsync always) on a free loopback port; return the port."""
    log_path = os.path.join(tmp, "redis.log")
    for _attempt in range(3):
        port = _free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    LOOPBACK,
                    "--dir",
                    tmp,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        deadline = time.monotonic() + 10.0
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _resp(port, "PING").startswith(b"+PONG"):
                    return port
            time.sleep(0.05)
        _stop_popen(proc)
    with open(log_path, "rb") as f:
        raise RuntimeError(f"redis-server did not answer PING: {f.read()[-300:]!r}")


def _redis_benchmark(port: int, seconds: float) -> Result:
    """redis-benchmark, 1 client, 100 per pipeline, XADD of a literal 100-byte value; a short
    probe run sizes ``-n`` so that the measured run lasts about ``seconds``."""
    if shutil.which("redis-benchmark") is None:
        raise FileNotFoundError("redis-benchmark not on PATH")
    n, rps, row = 2000, 0.0, {}
    for timeout in (seconds + 10, 3 * seconds + 10):
        if rps:
            n = int(min(max(rps * seconds, 1000), 20_000_000))
        cmd = [
            "redis-benchmark",
            "-h",
            LOOPBACK,
            "-p",
            str(port),
            "-c",
            "1",
            "-P",
            "100",
            "-n",
            str(n),
            "--csv",
            "XADD",
            _STREAM,
            "*",
            "field",
            _VALUE,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        if out.returncode != 0 or not rows:
            raise RuntimeError(f"redis-benchmark exited {out.returncode}: {out.stderr[-300:]}")
        row, rps = rows[-1], float(rows[-1]["rps"])
    return {
        "metric": "redis-benchmark XADD -c 1 -P 100",
        "requests_per_s": round(rps, 1),
        "mb_per_s": round(rps * len(_VALUE) / 1e6, 2),
        "requests": n,
        **{f"p{q}_ms": float(row[f"p{q}_latency_ms"]) for q in (50, 95, 99)},
    }


def _redis_py(port: int, seconds: float, size: int) -> Result:
    """redis-py: pipelines (no MULTI) of ``size`` XADDs in a loop for ``seconds``."""
    import redis

    lat: list[float] = []
    with redis.Redis(host=LOOPBACK, port=port, socket_timeout=30) as client:
        t0 = time.perf_counter()
        for _ in range(_MAX_LOOPS):
            start = time.perf_counter()
            if start >= t0 + seconds:
                break
            pipe = client.pipeline(transaction=False)
            for _ in range(size):
                pipe.xadd(_STREAM, {"field": _VALUE})
            pipe.execute()
            lat.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - t0
    events = len(lat) * size
    return {
        "metric": f"redis-py pipeline of {size} XADD",
        "events_per_s": round(events / elapsed, 1),
        "mb_per_s": round(events * len(_VALUE) / elapsed / 1e6, 2),
        **_percentiles(lat, 1e3, "ms"),
    }


def _redis_measurements(port: int, seconds: float) -> list[Result]:
    runs: list[tuple[str, Callable[[], Result]]] = [
        ("redis-benchmark XADD", lambda: _redis_benchmark(port, seconds)),
        *[
            (f"redis-py pipeline of {k} XADD", lambda k=k: _redis_py(port, seconds, k))
            for k in (100, 1000)
        ],
    ]
    out: list[Result] = []
    for metric, run in runs:
        try:
            out.append(run())
        except Exception as exc:  # redis not importable, tool failures: report and go on
            out.append({"metric": metric, "available": False, "reason": repr(exc)})
        with contextlib.suppress(OSError):
            _resp(port, "DEL", _STREAM)
    return out


def redis_xadd(seconds: float = 3.0) -> Result:
    """Redis 7 XADD with appendonly + appendfsync always, on our own loopback redis-server."""
    name = "redis_xadd"
    if shutil.which("redis-server") is None:
        return _unavailable(name, "redis-server not on PATH")
    tmp = tempfile.mkdtemp(prefix="redis-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = _start_redis(tmp, procs)
        version = _resp(port, "INFO", "server").split(b"redis_version:")[-1].split(b"\r")[0]
        measurements = _redis_measurements(port, seconds)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return _unavailable(name, f"error: {exc!r}")
    finally:
        for proc in procs:
            _stop_popen(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "name": name,
        "available": True,
        "version": version.decode(errors="replace"),
        "config": "appendonly yes, appendfsync always",
        "measurements": measurements,
    }


def run_all(directory: str | None = None, seconds: float = 3.0) -> list[Result]:
    """Run every baseline; ``directory`` (default: a fresh temp dir, removed after) for files."""
    base = directory if directory is not None else tempfile.mkdtemp(prefix="sv-baselines-")
    jobs: dict[str, Callable[[], Result]] = {
        "disk_fio": lambda: disk_fio(base, seconds),
        "fdatasync_rate": lambda: fdatasync_rate(base, seconds),
        "bare_append_limit": lambda: bare_append_limit(base, seconds),
        "redis_xadd": lambda: redis_xadd(seconds),
    }
    results: list[Result] = []
    try:
        for name, job in jobs.items():
            try:
                results.append(job())
            except Exception as exc:  # a baseline must never break the benchmark importing it
                results.append(_unavailable(name, f"error: {exc!r}"))
    finally:
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    return results


def _row(m: Result) -> str:
    """One table line: rate, MB/s and p50/p95/p99 with their unit, whichever ``m`` has."""
    if not m.get("available", True):
        return f"{m['metric']}: unavailable: {m.get('reason')}"
    rate = next(
        ((k, v) for k, v in m.items() if k.endswith("_per_s") and k != "mb_per_s"), ("", None)
    )
    cells = [
        f"{rate[1]:,.0f} {rate[0].removesuffix('_per_s')}/s" if rate[1] is not None else "",
        f"{m['mb_per_s']:.1f}" if "mb_per_s" in m else "",
    ]
    for q in ("p50", "p95", "p99"):
        unit = next((u for u in ("ms", "us") if f"{q}_{u}" in m), None)
        value = m[f"{q}_{unit}"] if unit else None
        cells.append(f"{value:.{2 if unit == 'ms' else 0}f} {unit}" if unit else "")
    widths = (22, 9, 11, 11, 11)
    return f"{m['metric'][:50]:<51}" + "".join(
        f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Baselines for perf/bench_append.py.")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    ap.add_argument("--dir", default=None, help="directory for scratch files (default: temp)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per baseline")
    args = ap.parse_args(argv)
    results = run_all(args.dir, args.seconds)
    if args.json:
        print("\n".join(json.dumps(r, sort_keys=True) for r in results))
        return 0
    print(render(results))
    return 0


def render(results: list[Result]) -> str:
    """The human table of `run_all`'s results."""
    lines = [f"{'measurement':<51}{'rate':>22}{'MB/s':>9}{'p50':>11}{'p95':>11}{'p99':>11}"]
    for r in results:
        if not r.get("available"):
            lines.append(f"{r['name']}: unavailable: {r.get('reason')}")
        lines.extend(_row(m) for m in r.get("measurements", []))
    return "\n".join(lines)


def rate_of(results: list[Result], metric_prefix: str, key: str) -> float | None:
    """The `key` value of the first available measurement whose metric starts with the prefix."""
    for r in results:
        for m in r.get("measurements", []):
            if m.get("available", True) and str(m.get("metric", "")).startswith(metric_prefix):
                return m.get(key)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
