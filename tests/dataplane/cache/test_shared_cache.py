"""The shared cache file and the block ring: other processes read what the owner wrote, and
never act on a block reused under them."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from streamvault.client.protocol.errors import InvalidArgument
from streamvault.dataplane.cache import BlockRef, BlockRing, SharedCache, parse_size


@pytest.fixture
def cache(tmp_path):
    c = SharedCache.create(
        str(tmp_path / "cache"), 4 * 1024 * 1024, regions=2, block_bytes=64 * 1024
    )
    yield c
    c.close()


def _reader(path: str, ref: tuple, queue) -> None:
    other = SharedCache.open(path)
    queue.put(other.read(BlockRef(*ref), 10, 5))
    other.close()


def test_another_process_reads_what_the_owner_wrote(cache):
    ref = cache.claim(1, 3)
    cache.write(ref, 10, b"hello")
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_reader, args=(cache.path, tuple(ref), queue))
    proc.start()
    assert queue.get(timeout=30) == b"hello"
    proc.join(timeout=30)


def test_a_reused_block_is_never_read_with_an_old_generation(cache):
    ref = cache.claim(0, 0)
    cache.write(ref, 0, b"old data")
    newer = cache.claim(0, 0)
    cache.write(newer, 0, b"new data")
    assert cache.read(ref, 0, 8) is None
    assert cache.read(newer, 0, 8) == b"new data"
    assert newer.generation == ref.generation + 1


def test_ring_reuses_least_recently_freed_and_evicts_only_unpinned(cache):
    ring = BlockRing(cache, 0)
    refs = [ring.allocate() for _ in range(ring.total)]
    assert all(refs) and ring.allocate() is None, "every block pinned: nothing to hand out"
    assert ring.utilization == 1.0 and ring.credit() == 0.0
    evicted = []
    ring.unpin(refs[5].block, lambda: evicted.append(5))
    ring.unpin(refs[2].block, lambda: evicted.append(2))
    ring.touch(refs[5].block)
    again = ring.allocate()
    assert again.block == refs[2].block and evicted == [2], "least recently used goes first"
    assert cache.read(refs[2], 0, 1) is None
    ring.free(refs[7].block, pinned=True)
    ring.free(refs[5].block, pinned=False)
    assert [ring.allocate().block for _ in range(2)] == [refs[7].block, refs[5].block]


def test_credit_slows_from_75_percent_and_stops_at_90(cache):
    ring = BlockRing(cache, 1)
    for _ in range(int(ring.total * 0.75)):
        ring.allocate()
    assert ring.credit() == 1.0
    while ring.utilization < 0.9:
        ring.allocate()
    assert ring.credit() == 0.0


@pytest.mark.parametrize(
    "text,value",
    [("64M", 64 << 20), ("1G", 1 << 30), ("4096", 4096), ("512k", 512 << 10), ("2GiB", 2 << 30)],
)
def test_sizes_parse(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "-1M", "0"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(os.urandom(4096))
    from streamvault.client.protocol.errors import StorageError

    with pytest.raises(StorageError):
        SharedCache.open(str(path))
