"""Unbounded streams: data flows from the durable log through the shared cache to LTS, the
log is truncated behind it, and history is read back from LTS through the same API.

Each test runs a real standalone with a small cache (so history is evicted early) and small
ledgers (so truncation shows), against the file backend or S3 (moto_server over HTTP)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support.cluster import Standalone
from support.history import check_exactly_once, event, parse, read_all, unique
from support.s3 import CREDENTIALS, FaultProxy, start_moto, stop_process

from streamvault.client import StreamManager
from streamvault.client.protocol.naming import container_for, segment_name
from streamvault.dataplane.container.tiering import parse_chunk_name
from streamvault.lts.s3_store import S3ChunkStore

MIB = 1024 * 1024
CACHE = "32M"
LEDGER = 20 * MIB
EVENT_BYTES = 1000
S3_ENV = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS["access_key"],
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS["secret_key"],
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, port = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def _bucket(endpoint: str) -> str:
    name = f"sv-{uuid.uuid4().hex[:12]}"
    S3ChunkStore(name, endpoint_url=endpoint, create_bucket=True, **CREDENTIALS).close()
    return name


def _cluster(
    tmp_path: Path, *, lts: list[str], env: dict[str, str] | None = None, containers: int = 2
) -> Standalone:
    extra = ["--ledger-size", str(LEDGER), "--flush-wait", "1", *lts]
    return Standalone(
        tmp_path / "data", containers=containers, cache_size=CACHE, extra=extra, env=env
    )


def _log_bytes(data_dir: Path) -> int:
    """Bytes of the durable log's ledger files now (one truncated meanwhile counts 0: the
    watcher below must not die of it, or the peak it reports would stop growing)."""
    total = 0
    for path in (data_dir / "log").rglob("ledger-*.log"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


def _write(mgr, scope: str, stream: str, *, megabytes: int, keys: int = 8) -> dict[int, int]:
    """Write `megabytes` of 1000-byte events over `keys` keys; return events per key."""
    per_call = 100
    counts = dict.fromkeys(range(keys), 0)
    with mgr.create_writer(scope, stream) as writer:
        for call in range(megabytes * MIB // (per_call * EVENT_BYTES)):
            key = call % keys
            batch = [event(key, counts[key] + i, EVENT_BYTES) for i in range(per_call)]
            counts[key] += per_call
            writer.write_events(batch, routing_key=f"key-{key}")
    return counts


def _check_tiling(chunk_names: list[str]) -> None:
    """Per segment, chunks tile [0, end) exactly: no gap, no overlap, no leftover orphan."""
    ranges: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name in chunk_names:
        parsed = parse_chunk_name(name)
        assert parsed is not None, name
        ranges[parsed[1]].append((parsed[2], parsed[3]))
    for segment, spans in ranges.items():
        spans.sort()
        position = 0
        for start, end in spans:
            assert start == position, f"{segment}: chunk at {start}, expected {position}: {spans}"
            position = end


def _file_chunks(data_dir: Path) -> list[str]:
    root = data_dir / "lts"
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("~")
    ]


def _read_while_writing(mgr, scope: str, stream: str, total: int) -> list[bytes]:
    """Read `total` events from the head while another writer keeps appending (key 99)."""
    stop = threading.Event()
    written = [0]

    def tail_writer() -> None:
        with mgr.create_writer(scope, stream) as writer:
            while not stop.is_set() and written[0] < 200_000:
                writer.write_events(
                    [event(99, written[0] + i, 200) for i in range(50)], routing_key="key-99"
                )
                written[0] += 50
                time.sleep(0.002)

    thread = threading.Thread(target=tail_writer)
    thread.start()
    try:
        got = read_all(mgr, scope, stream, total=total, readers=2, deadline_s=180)
    finally:
        stop.set()
        thread.join(timeout=60)
    return got


def _split_tail(got: list[bytes]) -> tuple[list[bytes], list[int]]:
    history, tail = [], []
    for data in got:
        key, seq = parse(data)
        (tail.append(seq) if key == 99 else history.append(data))
    return history, tail


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_history_far_beyond_the_cache_reads_back_identical_while_a_writer_appends(
    tmp_path, request, backend
):
    """10x the cache size written; the log stays a few ledgers; everything reads back from
    the head, byte-identical and in key order, while another writer keeps appending."""
    if backend == "s3":
        endpoint = request.getfixturevalue("moto")
        cluster = _cluster(
            tmp_path,
            lts=["--lts", f"s3://{_bucket(endpoint)}", "--s3-endpoint", endpoint],
            env=S3_ENV,
        )
    else:
        cluster = _cluster(tmp_path, lts=[])
    cluster.start()
    peak = [0]
    stop = threading.Event()

    def watch_log() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _log_bytes(cluster.data_dir))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_log)
    watcher.start()
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=2)
            counts = _write(mgr, scope, stream, megabytes=320)
            stop.set()
            watcher.join()
            got = _read_while_writing(mgr, scope, stream, sum(counts.values()))
            workers = [p for p in mgr.status().processes if p.role == "worker"]
    finally:
        stop.set()
        cluster.kill()
    history, tail = _split_tail(got)
    check_exactly_once(history, counts)
    assert all(data == event(*parse(data), EVENT_BYTES) for data in history), "bytes differ"
    assert tail == sorted(set(tail)), "the appending writer's events out of order or twice"
    assert sum(w.info["lts_reads"] for w in workers) > 0, "history must come from LTS"
    assert sum(w.info["lts_zstd_reads"] for w in workers) > 0, "compressed history goes as zstd"
    assert sum(w.info["cache_reads"] for w in workers) > 0, "the tail must come from the cache"
    # 2 containers: each keeps about its open ledger, one being emptied, one being filled
    assert peak[0] <= 2 * 4 * LEDGER, f"log grew to {peak[0]} bytes for 320 MiB written"
    if backend == "file":
        _check_tiling(_file_chunks(cluster.data_dir))


def test_lts_outage_throttles_with_bounded_memory_then_everything_arrives_once(tmp_path, moto):
    """S3 answers 503 for a while: writers slow down and stop (never an error, never a
    loss), worker memory stays bounded; once S3 is back everything reaches LTS exactly once.
    """
    bucket = _bucket(moto)
    proxy = FaultProxy(int(moto.rsplit(":", 1)[1]))
    cluster = _cluster(
        tmp_path, lts=["--lts", f"s3://{bucket}", "--s3-endpoint", proxy.url], env=S3_ENV
    )
    cluster.start()
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=2)
            proxy.fail_next = 10**9  # outage
            writer = mgr.create_writer(scope, stream)
            futures: list = []
            counts = dict.fromkeys(range(4), 0)

            def write() -> None:
                for call in range(1200):  # ~120 MB: several times the cache
                    key = call % 4
                    futures.append(
                        writer.write_events(
                            [event(key, counts[key] + i, EVENT_BYTES) for i in range(100)],
                            routing_key=f"key-{key}",
                        )
                    )
                    counts[key] += 100

            thread = threading.Thread(target=write)
            thread.start()
            time.sleep(8)
            pids = [p.pid for p in mgr.status().processes if p.role in ("worker", "uploader")]
            rss = max(psutil.Process(pid).memory_info().rss for pid in pids)
            acked = sum(1 for f in futures if f.done())
            assert thread.is_alive() and acked < 1200, "ingestion must throttle during the outage"
            assert not any(f.done() and f.exception() for f in futures), "throttled, not failed"
            assert rss < 400 * MIB, f"memory must stay bounded during the outage: {rss}"
            proxy.fail_next = 0  # S3 is back
            thread.join(timeout=240)
            writer.flush(timeout=240)
            writer.close()
            assert all(f.exception() is None for f in futures)
            got = read_all(mgr, scope, stream, total=sum(counts.values()), deadline_s=180)
        check_exactly_once(got, counts)
        store = S3ChunkStore(bucket, endpoint_url=moto, **CREDENTIALS)
        deadline = time.monotonic() + 30
        while True:  # orphans of failed attempts are collected; every byte is in LTS once
            try:
                _check_tiling([c.name for c in store.list()])
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        store.close()
    finally:
        cluster.kill()
        proxy.close()


@pytest.mark.parametrize("point", ["after_chunk_put_before_meta", "before_chunk_meta"])
def test_crash_between_chunk_upload_and_metadata_loses_nothing_and_leaves_no_orphan(
    tmp_path, point
):
    """SIGKILL of the uploader (after the chunk is stored, before it answers) or of the worker
    (after the answer, before the chunk is logged): the range is uploaded again, nothing is
    lost, no chunk is referenced twice, and the orphan is collected."""
    marker = tmp_path / "crashed"
    cluster = _cluster(
        tmp_path, lts=[], containers=2, env={"STREAMVAULT_CRASH_POINT": f"{point}:{marker}"}
    )
    cluster.start()
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            counts = _write(mgr, scope, stream, megabytes=40, keys=4)
            assert marker.exists(), f"crash point {point} was never reached"
            got = read_all(mgr, scope, stream, total=sum(counts.values()), deadline_s=180)
            check_exactly_once(got, counts)
            deadline = time.monotonic() + 30
            while True:
                try:
                    _check_tiling(_file_chunks(cluster.data_dir))
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
    finally:
        cluster.kill()
    assert os.path.exists(marker)


def test_truncation_drops_history_below_the_cut_in_lts_and_readers_start_there(tmp_path):
    from streamvault.client.protocol.errors import SegmentTruncated

    cluster = _cluster(tmp_path, lts=[], containers=2).start()
    try:
        scope, stream = unique("s"), unique("t")
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            counts = _write(mgr, scope, stream, megabytes=60, keys=1)
            segment = mgr.get_stream_info(scope, stream).segments[0].segment
            deadline = time.monotonic() + 30  # let a few chunks reach LTS
            while len(_file_chunks(cluster.data_dir)) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            mgr.create_reader_group(scope, "before", [stream])
            with mgr.create_reader(scope, "before", "r") as reader:
                cut_event = None
                for _ in range(30_000):  # the 30,000th event's position is the cut
                    cut_event = reader.read_next_event(10)
            assert cut_event is not None and cut_event.segment == segment
            assert mgr.truncate_stream(scope, stream, {segment: cut_event.offset})
            got = read_all(mgr, scope, stream, total=counts[0] - 29_999, readers=1)
            assert parse(got[0]) == (0, 29_999), "readers start at the cut"
            check_exactly_once([event(0, i, EVENT_BYTES) for i in range(29_999)] + got, counts)
            with pytest.raises(SegmentTruncated):
                from streamvault.client.connection import SegmentClient
                from streamvault.client.protocol import messages as m

                client = SegmentClient(mgr.ctx, mgr._controller.endpoint_for)
                try:
                    client.call(segment, m.ReadSegment(0, 1024, 0, segment.encode()))
                finally:
                    client.close()
        deadline = time.monotonic() + 20  # deletes run on the worker's LTS pool
        while True:
            chunks = _file_chunks(cluster.data_dir)
            below = [  # of the truncated segment: reader groups' state segments have chunks too
                n
                for n in chunks
                if parse_chunk_name(n)[1] == segment and parse_chunk_name(n)[3] <= cut_event.offset
            ]
            if not below or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert below == [], f"chunks wholly below the cut must be deleted: {below}"
    finally:
        cluster.kill()


def _ledgers_of(cluster: Standalone, mgr, container: int, replicated: bool) -> set[int]:
    """The ledgers of `container`'s log that hold data now: its ledger files (RF=1), or
    what every bookie holds for it (RF=3)."""
    from streamvault.dataplane.log.metadata import LEDGER_ID_SHIFT

    if not replicated:
        directory = cluster.data_dir / "log" / f"container-{container:04d}"
        return {int(p.name[7:23], 16) for p in directory.glob("ledger-*.log")}
    import zmq

    from streamvault.client.protocol import messages as m
    from streamvault.dataplane.log.bookie_client import BookieClient

    low = container << LEDGER_ID_SHIFT
    listing = m.ListLedgers(low, low + (1 << LEDGER_ID_SHIFT))
    ctx = zmq.Context()
    client = BookieClient(ctx)
    try:
        held: set[int] = set()
        for p in mgr.status().processes:
            if p.role == "bookie":
                held |= set(client.call(p.endpoint, listing, 10).ids)
        return held
    finally:
        client.close()
        ctx.term()


@pytest.mark.parametrize("replicas", [1, 3])
def test_an_idle_container_lets_its_ledgers_go_once_its_data_is_in_lts(tmp_path, replicas):
    """A container that wrote and went idle checkpoints into a new ledger once its bytes are
    all in LTS: the ledgers holding them are deleted (from every bookie at RF=3; without
    this they stayed, pinning the bookies' shared journal), and after a SIGKILL, recovering
    from that checkpoint, everything reads back once."""
    replication = ["--replicas", "3", "--ack-quorum", "2"] if replicas == 3 else []
    extra = ["--ledger-size", str(LEDGER), "--flush-wait", "1", *replication]
    cluster = Standalone(tmp_path / "data", containers=2, cache_size=CACHE, extra=extra).start()
    try:
        scope, stream = unique("s"), unique("t")
        container = container_for(segment_name(scope, stream, 0), 2)
        with StreamManager(cluster.controller) as mgr:
            mgr.create_scope(scope)
            mgr.create_stream(scope, stream, initial_segments=1)
            counts = _write(mgr, scope, stream, megabytes=4, keys=2)
            written = _ledgers_of(cluster, mgr, container, replicas == 3)
            assert written, "the data's ledger"
            deadline = time.monotonic() + 60  # flush wait 1 s, then idle 5 s
            while (held := _ledgers_of(cluster, mgr, container, replicas == 3)) & written:
                assert time.monotonic() < deadline, f"still held: {sorted(held & written)}"
                time.sleep(0.2)
            assert held and min(held) > max(written), "a new ledger holds the checkpoint"
            workers = [p for p in mgr.status().processes if p.role == "worker"]
            assert sum(w.info["idle_checkpoints"] for w in workers) >= 1
        cluster.restart()  # SIGKILL: recovery starts at that checkpoint
        with StreamManager(cluster.controller) as mgr:
            got = read_all(mgr, scope, stream, total=sum(counts.values()), readers=1)
    finally:
        cluster.kill()
    check_exactly_once(got, counts)
    assert all(data == event(*parse(data), EVENT_BYTES) for data in got), "bytes differ"
