"""The shared cache file and the block ring: other processes read what the owner wrote, and
never act on a block reused under them."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

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


class _Tracker:
    def __init__(self) -> None:
        self.done = False


def test_a_block_lent_to_a_reply_is_not_reused_until_sent(cache):
    ring = BlockRing(cache, 0)
    refs = [ring.allocate() for _ in range(ring.total)]
    tracker = _Tracker()
    ring.unpin(refs[0].block, lambda: None)
    ring.unpin(refs[1].block, lambda: None)
    ring.lend(refs[0].block, tracker)
    assert ring.allocate().block == refs[1].block, "the lent block is skipped"
    assert ring.allocate() is None
    tracker.done = True
    ring.unpin(refs[2].block, lambda: None)
    assert ring.allocate().block == refs[0].block


def test_segment_cache_appends_reads_and_unpins(cache):
    from streamvault.dataplane.cache.segment_cache import SegmentCache

    ring = BlockRing(cache, 0)
    segments = SegmentCache(ring)
    data = os.urandom(150 * 1024)  # spans three 64 KiB blocks
    assert segments.append(7, 0, data[:1000]) and segments.append(7, 1000, data[1000:])
    assert b"".join(v.tobytes() for v, _ in segments.read(7, 0, 1 << 20)) == data
    hits = segments.read(7, 70_000, 100)
    assert b"".join(v.tobytes() for v, _ in hits) == data[70_000:70_100]
    assert [b for _, b in hits] == [1]
    assert segments.read(7, len(data), 10) == [] and segments.read(8, 0, 10) == []
    refs = segments.refs(7, 10, len(data))
    assert sum(n for _, _, n in refs) == len(data) - 10
    assert ring.pinned == 3
    segments.unpin_below(7, 2 * 64 * 1024)
    assert ring.pinned == 1, "the two full blocks below the point are evictable"
    assert segments.append(7, len(data), b"more"), "the open extent keeps filling"
    segments.drop(7)
    assert ring.pinned == 0 and segments.read(7, 0, 10) == []


def test_copy_into_refuses_a_reused_block(cache):
    ref = cache.claim(1, 2)
    cache.write(ref, 0, b"abcdef")
    out = bytearray(4)
    assert cache.copy_into(ref, 1, memoryview(out)) and bytes(out) == b"bcde"
    cache.claim(1, 2)
    assert not cache.copy_into(ref, 1, memoryview(out))


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_populate_faults_a_region_in_without_changing_its_bytes(tmp_path):
    """After `populate(1)` the owner of region 1 writes all of it with (almost) no page
    faults, and what it had written before is intact; region 0, whose populate was stopped
    before it began, faults on nearly every page (the measurement can tell the two apart)."""
    cache = SharedCache.create(
        str(tmp_path / "cache"), 16 * 1024 * 1024, regions=2, block_bytes=64 * 1024
    )
    try:
        blocks, pages = cache.blocks_per_region, cache.blocks_per_region * 64 * 1024 // 4096
        before = cache.claim(1, 0)
        cache.write(before, 0, b"written before populate")
        assert cache.populate(1), "madvise(MADV_POPULATE_WRITE) refused (Linux >= 5.14)"
        assert cache.read(before, 0, 23) == b"written before populate"
        assert cache.read(cache.claim(1, blocks - 1), 0, 4096) == bytes(4096)
        payload = os.urandom(64 * 1024)

        def write_region(region: int) -> int:
            faults = _minor_faults()
            for block in range(1 if region == 1 else 0, blocks):
                cache.write(cache.claim(region, block), 0, payload)
            return _minor_faults() - faults

        stop = threading.Event()
        stop.set()
        assert cache.populate(0, stop=stop)  # stopped before its first call: nothing done
        populated, unpopulated = write_region(1), write_region(0)
        assert populated < pages // 10, (populated, pages)
        assert unpopulated > pages // 2, (unpopulated, pages)
    finally:
        cache.close()
