"""One conformance suite for every chunk-store backend, plus what is specific to each.

The `store` fixture runs every conformance test against `FileChunkStore` (a temp dir) and
`S3ChunkStore` talking HTTP to a real `moto_server` process on 127.0.0.1 (a fresh bucket
per test). The S3 retry tests put a small fault-injecting HTTP proxy between the store and
moto (or in front of nothing), so retries, lost replies and exhausted attempts happen over
real sockets.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.s3 import (  # noqa: E402
    CREDENTIALS,
    MIB,
    THREAD_WAIT_S_MAX,
    FaultProxy,
    free_port,
    start_moto,
    stop_process,
)

from streamvault.client.protocol.errors import (
    ChunkExists,
    ChunkNotFound,
    InvalidArgument,
    StorageError,
)
from streamvault.lts import ChunkInfo, ChunkStore, FileChunkStore, open_chunk_store
from streamvault.lts.file_store import DIRECT_WRITE_BYTES, TEMP_FILE_PREFIX
from streamvault.lts.s3_store import S3ChunkStore, _md5_etag

BAD_NAMES = [
    "",
    "/abs",
    "trailing/",
    "a//b",
    ".",
    "..",
    "a/./b",
    "a/../b",
    "../escape",
    "space name",
    "tilde~",
    "back\\slash",
    "nul\x00",
    "ünicode",
    "x" * 513,
    "/".join(["y" * 200] * 3),  # 602 bytes
    "z" * 256,  # one component longer than a file name may be
]


# --- moto_server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, port = start_moto(tmp_path_factory.mktemp("moto") / "moto_server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def _s3_store(endpoint: str, bucket: str | None = None, **overrides: Any) -> S3ChunkStore:
    settings: dict[str, Any] = {
        "endpoint_url": endpoint,
        "create_bucket": True,
        # Small enough that the 11 MiB conformance chunk goes multipart (S3's part minimum
        # is 5 MiB, except for the last part).
        "multipart_bytes": 6 * MIB,
        "part_bytes": 5 * MIB,
        "attempts_max": 3,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        **CREDENTIALS,
    }
    settings.update(overrides)
    return S3ChunkStore(bucket or f"lts-{uuid.uuid4().hex[:16]}", **settings)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    if request.param == "file":
        chunk_store: ChunkStore = FileChunkStore(str(tmp_path / "lts"))
    else:
        chunk_store = _s3_store(request.getfixturevalue("moto_endpoint"))
    try:
        yield chunk_store
    finally:
        chunk_store.close()


def _payload(size: int, seed: int = 0) -> bytes:
    block = bytes((seed + index) % 251 for index in range(4096))
    return (block * (size // len(block) + 1))[:size]


# --- conformance: every backend ---------------------------------------------------------------


def test_store_is_a_chunk_store_without_optional_capabilities(store: ChunkStore) -> None:
    assert isinstance(store, ChunkStore)
    assert store.supports_append is False and store.supports_concat is False


def test_create_then_read_whole_range_and_past_end(store: ChunkStore) -> None:
    data = _payload(10_000)
    store.create("scope/stream/0/chunk-1-0", data)
    name = "scope/stream/0/chunk-1-0"
    assert store.read(name, 0, len(data)) == data
    assert store.read(name, 0, 1 << 30) == data  # longer than the chunk: short at the end
    assert store.read(name, 1234, 100) == data[1234:1334]
    assert store.read(name, 9_990, 100) == data[9_990:]
    assert store.read(name, len(data) - 1, 1) == data[-1:]
    assert store.read(name, len(data), 10) == b""
    assert store.read(name, len(data) + 5, 10) == b""
    assert store.read(name, 5, 0) == b""


def test_size_and_exists(store: ChunkStore) -> None:
    assert not store.exists("a/b")
    store.create("a/b", b"12345")
    assert store.exists("a/b") and store.size("a/b") == 5
    assert not store.exists("a/b2") and not store.exists("a")


def test_create_twice_is_chunk_exists_and_the_first_content_stays(store: ChunkStore) -> None:
    store.create("seg/chunk", b"first")
    with pytest.raises(ChunkExists, match="seg/chunk"):
        store.create("seg/chunk", b"second, longer content")
    assert store.read("seg/chunk", 0, 100) == b"first" and store.size("seg/chunk") == 5


def test_absent_chunk_is_not_found(store: ChunkStore) -> None:
    for call in (
        lambda: store.read("absent/chunk", 0, 10),
        lambda: store.read("absent/chunk", 0, 0),
        lambda: store.size("absent/chunk"),
    ):
        with pytest.raises(ChunkNotFound, match="absent/chunk"):
            call()
    assert store.exists("absent/chunk") is False
    assert store.delete("absent/chunk") is False


def test_list_filters_by_prefix_and_sorts_by_name(store: ChunkStore) -> None:
    names = ["s/b/2", "s/a/10", "s/a/2", "s/ab", "t/x", "top", "s/a/1"]
    for index, name in enumerate(names):
        store.create(name, b"x" * index)
    sizes = {name: index for index, name in enumerate(names)}

    def listed(prefix: str) -> list[ChunkInfo]:
        return [ChunkInfo(name, sizes[name]) for name in sorted(names) if name.startswith(prefix)]

    for prefix in ["", "s", "s/", "s/a", "s/a/", "s/a/1", "t/", "to", "s/b/2", "nothing", "s/c/"]:
        assert store.list(prefix) == listed(prefix), prefix
    assert [info.name for info in store.list()] == sorted(names)


def test_delete_returns_true_then_false_and_the_name_can_be_reused(store: ChunkStore) -> None:
    store.create("d/chunk", b"old")
    store.create("d/other", b"keep")
    assert store.delete("d/chunk") is True
    assert store.delete("d/chunk") is False
    assert not store.exists("d/chunk")
    with pytest.raises(ChunkNotFound):
        store.read("d/chunk", 0, 3)
    assert [info.name for info in store.list("d/")] == ["d/other"]
    store.create("d/chunk", b"new")
    assert store.read("d/chunk", 0, 10) == b"new"


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_bad_names_are_invalid_argument_before_any_io(store: ChunkStore, name: str) -> None:
    for call in (
        lambda: store.create(name, b"data"),
        lambda: store.read(name, 0, 1),
        lambda: store.delete(name),
        lambda: store.size(name),
        lambda: store.exists(name),
    ):
        with pytest.raises(InvalidArgument):
            call()
    assert store.list() == []


def test_good_names_use_the_whole_alphabet(store: ChunkStore) -> None:
    names = ["A-Z_a.z=09", ".hidden/x", "a/b/c/d/e/f", "/".join(["y" * 200, "z" * 200, "w" * 100])]
    for name in names:
        store.create(name, name.encode())
    assert [info.name for info in store.list()] == sorted(names)
    assert all(store.read(name, 0, 1000) == name.encode() for name in names)


def test_bad_ranges_and_prefixes_are_invalid_argument(store: ChunkStore) -> None:
    store.create("r", b"abc")
    for offset, length in [(-1, 1), (0, -1), (-5, -5)]:
        with pytest.raises(InvalidArgument, match="offset"):
            store.read("r", offset, length)
    for prefix in ["~tmp", "a b", "x" * 513]:
        with pytest.raises(InvalidArgument):
            store.list(prefix)


def test_zero_byte_chunk(store: ChunkStore) -> None:
    store.create("empty/0", b"")
    assert store.exists("empty/0") and store.size("empty/0") == 0
    assert store.read("empty/0", 0, 100) == b"" and store.read("empty/0", 3, 1) == b""
    assert store.list("empty/") == [ChunkInfo("empty/0", 0)]
    with pytest.raises(ChunkExists):
        store.create("empty/0", b"")


def test_memoryview_slices_are_stored_as_their_bytes(store: ChunkStore) -> None:
    data = bytearray(_payload(70_000, seed=3))
    store.create("mv/chunk", memoryview(data)[100:60_100])
    assert store.read("mv/chunk", 0, 70_000) == bytes(data[100:60_100])


def test_chunk_above_the_multipart_threshold_reads_back_identical(store: ChunkStore) -> None:
    data = os.urandom(11 * MIB)  # S3 fixture: three parts of 5, 5 and 1 MiB
    store.create("big/chunk", data)
    assert store.size("big/chunk") == len(data)
    assert store.read("big/chunk", 0, len(data)) == data
    start = 5 * MIB - 10  # across the first part boundary
    assert store.read("big/chunk", start, 20) == data[start : start + 20]
    with pytest.raises(ChunkExists):
        store.create("big/chunk", data)
    assert store.list("big/") == [ChunkInfo("big/chunk", len(data))]


def test_concurrent_creates_of_different_names(store: ChunkStore) -> None:
    names = [f"c/{thread}/{index}" for thread in range(8) for index in range(6)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(store.create, name, _payload(1000 + position, seed=position))
            for position, name in enumerate(names)
        ]
        for future in futures:
            future.result(timeout=THREAD_WAIT_S_MAX)
    assert [info.name for info in store.list("c/")] == sorted(names)
    for position, name in enumerate(names):
        assert store.read(name, 0, 1 << 20) == _payload(1000 + position, seed=position)


def test_a_closed_store_refuses_calls(store: ChunkStore) -> None:
    store.create("x", b"1")
    store.close()
    with pytest.raises(InvalidArgument, match="closed"):
        store.read("x", 0, 1)
    with pytest.raises(InvalidArgument, match="closed"):
        store.create("y", b"1")
    store.close()  # idempotent


# --- the file backend -------------------------------------------------------------------------


def _files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_file_create_leaves_no_temporary_file_visible(tmp_path: Path) -> None:
    store = FileChunkStore(str(tmp_path / "lts"))
    store.create("a/b/c", b"data")
    store.create("top", b"data")
    assert _files_under(tmp_path / "lts") == ["a/b/c", "top"]
    assert (tmp_path / "lts" / "a" / "b" / "c").read_bytes() == b"data"


def test_file_leftover_temporary_files_are_ignored(tmp_path: Path) -> None:
    """A crash mid-create leaves `~tmp-*` files (partial, or linked but not unlinked):
    they are never listed, and never block the name."""
    root = tmp_path / "lts"
    store = FileChunkStore(str(root))
    store.create("seg/1", b"one")
    (root / f"{TEMP_FILE_PREFIX}0123abcd").write_bytes(b"partial")
    (root / "seg" / f"{TEMP_FILE_PREFIX}feedbeef").write_bytes(b"par")
    os.link(root / "seg" / "1", root / "seg" / f"{TEMP_FILE_PREFIX}linked")
    assert store.list() == [ChunkInfo("seg/1", 3)]
    assert store.list("seg/") == [ChunkInfo("seg/1", 3)]
    store.create("seg/2", b"two")
    assert [info.name for info in store.list()] == ["seg/1", "seg/2"]
    assert store.delete("seg/1") and store.read("seg/2", 0, 9) == b"two"


def test_file_concurrent_creates_of_one_name_exactly_one_wins(tmp_path: Path) -> None:
    store = FileChunkStore(str(tmp_path / "lts"))
    outcomes: list[bytes] = []
    lock = threading.Lock()

    def create(seed: int) -> None:
        data = _payload(100_000, seed=seed)
        try:
            store.create("race/chunk", data)
        except ChunkExists:
            return
        with lock:
            outcomes.append(data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(create, seed) for seed in range(16)]:
            future.result(timeout=THREAD_WAIT_S_MAX)
    assert len(outcomes) == 1
    assert store.read("race/chunk", 0, 1 << 20) == outcomes[0]
    assert _files_under(tmp_path / "lts") == ["race/chunk"]


def test_file_chunks_survive_reopening_the_store(tmp_path: Path) -> None:
    root = tmp_path / "missing" / "parents" / "lts"
    FileChunkStore(str(root)).create("p/q", b"durable")
    reopened = FileChunkStore(str(root))
    assert reopened.list() == [ChunkInfo("p/q", 7)] and reopened.read("p/q", 0, 7) == b"durable"


def test_file_failed_fsync_is_storage_error_and_leaves_no_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileChunkStore(str(tmp_path / "lts"))
    store.create("dir/existing", b"x")  # the directory is already durable

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match="create"):
        store.create("dir/chunk", b"never visible")
    monkeypatch.undo()
    assert not store.exists("dir/chunk")
    assert _files_under(tmp_path / "lts") == ["dir/existing"]


def _takes_o_direct(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(directory / "probe")
    return True


@pytest.mark.parametrize(
    "size",
    [1, 4095, 4096, 4097, DIRECT_WRITE_BYTES - 1, DIRECT_WRITE_BYTES, 2 * DIRECT_WRITE_BYTES + 5],
)
def test_file_chunks_written_with_o_direct_keep_their_exact_size_and_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Where the file system takes O_DIRECT the temporary file is opened with it, every
    write is block-aligned, and the last block's padding is cut off again."""
    root = tmp_path / "lts"
    store = FileChunkStore(str(root))
    if not _takes_o_direct(root):
        pytest.skip("the temp dir's file system does not take O_DIRECT")
    opens: list[int] = []
    writes: list[tuple[int, int]] = []
    real_open, real_pwrite = os.open, os.pwrite

    def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if TEMP_FILE_PREFIX in os.fspath(path):
            opens.append(flags)
        return real_open(path, flags, *args, **kwargs)

    def spy_pwrite(fd: int, data: Any, offset: int) -> int:
        writes.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "pwrite", spy_pwrite)
    data = _payload(size, seed=size)
    store.create("seg/chunk", data)
    monkeypatch.undo()
    assert len(opens) == 1 and opens[0] & os.O_DIRECT
    assert writes and all(offset % 4096 == 0 and length % 4096 == 0 for offset, length in writes)
    assert os.path.getsize(root / "seg" / "chunk") == size
    assert store.read("seg/chunk", 0, size + 10) == data
    assert _files_under(root) == ["seg/chunk"]


def test_file_a_file_system_refusing_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "lts"
    store = FileChunkStore(str(root))
    refused: list[str] = []
    real_open = os.open

    def tmpfs_like_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(os.fspath(path))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", tmpfs_like_open)
    data = _payload(5000)
    store.create("a", data)
    store.create("b", b"second")
    monkeypatch.undo()
    assert len(refused) <= 1  # asked once, then buffered for good
    assert store.read("a", 0, 5000) == data and store.read("b", 0, 6) == b"second"
    assert _files_under(root) == ["a", "b"]


def test_file_a_chunk_name_cannot_be_a_directory_of_other_chunks(tmp_path: Path) -> None:
    store = FileChunkStore(str(tmp_path / "lts"))
    store.create("a", b"file")
    with pytest.raises(InvalidArgument, match="prefix"):
        store.create("a/b", b"below a file")
    store.create("d/e", b"in a directory")
    with pytest.raises(InvalidArgument, match="directory"):
        store.create("d", b"over a directory")
    assert not store.exists("d") and store.delete("d") is False
    with pytest.raises(ChunkNotFound):
        store.read("d", 0, 1)


# --- URIs -------------------------------------------------------------------------------------


def test_open_chunk_store_parses_file_and_s3_uris(tmp_path: Path) -> None:
    for spec in [f"file:{tmp_path}/a", str(tmp_path / "a"), f"file://{tmp_path}/a"]:
        opened = open_chunk_store(spec)
        assert isinstance(opened, FileChunkStore) and opened.root == str(tmp_path / "a"), spec
    s3 = open_chunk_store("s3://my-bucket/pre/fix", s3_endpoint="http://127.0.0.1:1")
    assert isinstance(s3, S3ChunkStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == (
        "my-bucket",
        "pre/fix/",
        "http://127.0.0.1:1",
    )
    s3.close()
    for spec in ["", "http://x/y", "gs://b", "s3://", "s3:///x", "file:", "file://host/x"]:
        with pytest.raises(InvalidArgument):
            open_chunk_store(spec)
    for spec in ["s3://b?x=1", "s3://Bad_Bucket", "s3://bucket/../x"]:
        with pytest.raises(InvalidArgument):
            open_chunk_store(spec)


# --- the S3 backend: prefixes, probe objects, head-then-put -------------------------------------


def test_s3_prefixes_isolate_stores_and_foreign_keys_are_skipped(moto_endpoint: str) -> None:
    bucket = f"lts-{uuid.uuid4().hex[:16]}"
    first = _s3_store(moto_endpoint, bucket, prefix="one")
    second = _s3_store(moto_endpoint, bucket, prefix="/two/deeper/")
    try:
        first.create("c", b"1")
        second.create("c", b"22")
        first._client.put_object(Bucket=bucket, Key="one/~probe-leftover", Body=b"")
        first._client.put_object(Bucket=bucket, Key="one/bad//name", Body=b"")
        assert first.list() == [ChunkInfo("c", 1)]
        assert second.list() == [ChunkInfo("c", 2)] and second.read("c", 0, 9) == b"22"
        assert second.prefix == "two/deeper/"
    finally:
        first.close()
        second.close()


def test_s3_list_follows_continuation_tokens(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamvault.lts.s3_store as s3_store

    monkeypatch.setattr(s3_store, "LIST_PAGE_KEYS_MAX", 2)  # 7 chunks: four pages
    store = _s3_store(moto_endpoint)
    try:
        names = [f"p/{index:02d}" for index in range(7)]
        for name in reversed(names):
            store.create(name, name.encode())
        assert store.list("p/") == [ChunkInfo(name, 4) for name in names]
    finally:
        store.close()


def test_s3_head_then_put_mode_still_refuses_an_existing_name(moto_endpoint: str) -> None:
    store = _s3_store(moto_endpoint, conditional_create=False)
    try:
        store.create("n", b"first")
        with pytest.raises(ChunkExists):
            store.create("n", b"second")
        big = os.urandom(7 * MIB)
        store.create("big", big)
        assert store.read("big", 0, len(big)) == big
        assert store.read("n", 0, 9) == b"first"
    finally:
        store.close()


def test_s3_settings_out_of_range_are_invalid_argument() -> None:
    for overrides in [
        {"part_bytes": 1 * MIB},
        {"attempts_max": 0},
        {"backoff_s": 1.0, "backoff_max_s": 0.5},
        {"access_key": "only-one"},
        {"prefix": "a//b"},
    ]:
        settings: dict[str, Any] = {"endpoint_url": "http://127.0.0.1:1", **overrides}
        with pytest.raises(InvalidArgument):
            S3ChunkStore("bucket", **settings)
    with pytest.raises(InvalidArgument, match="bucket"):
        S3ChunkStore("No_Such", endpoint_url="http://127.0.0.1:1")


# --- the S3 backend over a faulty network --------------------------------------------------------


@pytest.fixture
def bucket(moto_endpoint: str) -> Iterator[str]:
    name = f"lts-{uuid.uuid4().hex[:16]}"
    _s3_store(moto_endpoint, name).close()  # creates it
    yield name


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    try:
        yield fault_proxy
    finally:
        fault_proxy.close()


def test_s3_transient_503s_are_retried_until_the_call_succeeds(
    moto_endpoint: str, bucket: str, proxy: FaultProxy
) -> None:
    direct = _s3_store(moto_endpoint, bucket)
    faulty = _s3_store(proxy.url, bucket, create_bucket=False, attempts_max=5)
    try:
        data = _payload(5000, seed=9)
        direct.create("t/read", data)
        proxy.fail_next = 4  # attempts_max - 1: the last attempt gets through
        assert faulty.read("t/read", 100, 50) == data[100:150]
        assert proxy.outcomes("failed") == 4 and proxy.outcomes("forwarded") == 1
        proxy.fail_next = 2
        assert faulty.size("t/read") == 5000
        proxy.fail_next = 3  # the first create also probes If-None-Match: more calls, all retried
        faulty.create("t/written", b"through the faults")
        assert direct.read("t/written", 0, 100) == b"through the faults"
        proxy.fail_next = 2
        assert [info.name for info in faulty.list("t/")] == ["t/read", "t/written"]
        proxy.fail_next = 2
        assert faulty.delete("t/written") is True and not direct.exists("t/written")
    finally:
        direct.close()
        faulty.close()


def test_s3_create_whose_reply_was_lost_succeeds_on_retry(
    moto_endpoint: str, bucket: str, proxy: FaultProxy
) -> None:
    """The put took effect but its reply was lost (connection closed); the retry finds the
    name taken (412) and recognises its own content by size and ETag. A refused attempt
    (503) is not ambiguous: a later 412 stays `ChunkExists` even for identical content."""
    faulty = _s3_store(proxy.url, bucket, create_bucket=False, conditional_create=True)
    direct = _s3_store(moto_endpoint, bucket)
    try:
        proxy.lose_reply_when = lambda method, path: method == "PUT"
        faulty.create("lost/small", b"landed once")
        # forwarded: the retried PUT (answered 412), then the HEAD that recognises the content
        assert proxy.outcomes("reply lost") == 1 and proxy.outcomes("forwarded") == 2
        assert direct.read("lost/small", 0, 100) == b"landed once"
        with pytest.raises(ChunkExists):  # a real second create is still refused
            faulty.create("lost/small", b"landed once")
        proxy.fail_next = 1
        with pytest.raises(ChunkExists):
            faulty.create("lost/small", b"landed once")

        big = os.urandom(11 * MIB)
        proxy.lose_reply_when = lambda method, path: method == "POST" and "uploadId=" in path
        faulty.create("lost/big", big)
        assert proxy.outcomes("reply lost") == 2
        assert direct.read("lost/big", 0, len(big)) == big
        # The check a lost multipart completion relies on: our ETag formula is S3's.
        etag = direct._client.head_object(Bucket=bucket, Key="lost/big")["ETag"].strip('"')
        assert etag == _md5_etag(memoryview(big), 5 * MIB) and etag.endswith("-3")
    finally:
        direct.close()
        faulty.close()


def test_s3_permanently_failing_endpoint_is_storage_error_after_attempts_max() -> None:
    attempts_max = 4
    dead = FaultProxy(upstream_port=None)
    store = _s3_store(
        dead.url, create_bucket=False, attempts_max=attempts_max, conditional_create=True
    )
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"after 4 attempt\(s\)") as failure:
            store.size("any/chunk")
        assert failure.value.fields["attempts"] == attempts_max
        assert failure.value.fields["status"] == 503
        assert dead.outcomes("failed") == attempts_max  # botocore added no retries of its own
        with pytest.raises(StorageError, match="SlowDown"):
            store.create("any/chunk", b"data")
        with pytest.raises(StorageError):
            store.list()
        # size, create, list: attempts_max each (503 SlowDown is a refusal, not ambiguous,
        # so create does not look for a landed attempt).
        assert dead.outcomes("failed") == 3 * attempts_max
        assert time.monotonic() - started < 60  # bounded: the backoff is capped
    finally:
        store.close()
        dead.close()


def test_s3_unreachable_endpoint_is_storage_error_after_attempts_max() -> None:
    store = _s3_store(
        f"http://127.0.0.1:{free_port()}", create_bucket=False, conditional_create=True
    )
    try:
        with pytest.raises(StorageError, match="endpoint") as failure:
            store.exists("x")
        assert failure.value.fields["attempts"] == 3
    finally:
        store.close()
