"""The shared cache: one memory-mapped file in /dev/shm, created by the host, mapped by
every worker and by the uploader.

Layout (little-endian):

    header (HEADER, 64 bytes): magic, version, block bytes, regions, blocks per region
    generation table: regions x blocks_per_region u64, one per block
    data: regions x blocks_per_region blocks of block_bytes each

Region r belongs to worker r, the only process that writes its blocks and their
generations. A writer bumps a block's generation *before* reusing it; a reader copies the
bytes it wants and then checks the generation it was given is still the block's current
one, so a reader never acts on bytes that were overwritten under it (seqlock-style: the
generation is the version). Generations only grow; generation 0 means never written.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading
from typing import NamedTuple

import numpy as np

from streamvault.client.protocol.errors import InvalidArgument, StorageError

CACHE_MAGIC = 0x48435653  # b"SVCH"
CACHE_VERSION = 1
HEADER = struct.Struct("<IHHIII")
HEADER_BYTES = 64
BLOCK_BYTES_DEFAULT = 64 * 1024
MADV_POPULATE_WRITE = 23
"""madvise(2) advice (Linux 5.14): fault the range in for writing, as a write would, without
changing its bytes."""
POPULATE_CHUNK_BYTES = 16 * 1024 * 1024
"""Bytes one madvise call populates (the stop flag is checked between calls)."""


def cache_path_for(data_dir: str) -> str:
    """Where the host of `data_dir` keeps its cache: /dev/shm if there is one."""
    import hashlib

    key = hashlib.blake2b(os.path.abspath(data_dir).encode(), digest_size=8).hexdigest()
    if os.path.isdir("/dev/shm"):
        return f"/dev/shm/streamvault-{key}.cache"
    return os.path.join(data_dir, "cache.shm")


def default_cache_bytes() -> int:
    """25 % of RAM, at most 1 GiB and at most half of the free space of the cache's file
    system (the file is allocated up front: a cache that cannot be backed fails at start,
    never with SIGBUS later)."""
    import psutil

    size = min(psutil.virtual_memory().total // 4, 1 << 30)
    if os.path.isdir("/dev/shm"):
        stats = os.statvfs("/dev/shm")
        size = min(size, stats.f_bavail * stats.f_frsize // 2)
    return size


class BlockRef(NamedTuple):
    region: int
    block: int
    generation: int


class SharedCache:
    """A mapping of the cache file (create it with `create`, map it with `open`)."""

    def __init__(
        self, path: str, mm: mmap.mmap, *, block_bytes: int, regions: int, blocks_per_region: int
    ) -> None:
        self.path = path
        self.mm = mm
        self.block_bytes = block_bytes
        self.regions = regions
        self.blocks_per_region = blocks_per_region
        table_bytes = 8 * regions * blocks_per_region
        self.data_offset = _align(HEADER_BYTES + table_bytes, 4096)
        self.generations = np.frombuffer(
            mm, dtype="<u8", count=regions * blocks_per_region, offset=HEADER_BYTES
        )
        self.data = np.frombuffer(
            mm,
            dtype=np.uint8,
            offset=self.data_offset,
            count=regions * blocks_per_region * block_bytes,
        )

    @classmethod
    def create(
        cls, path: str, size_bytes: int, *, regions: int, block_bytes: int = BLOCK_BYTES_DEFAULT
    ) -> SharedCache:
        if regions < 1 or block_bytes < 4096 or block_bytes % 4096:
            raise InvalidArgument(
                f"cache: regions={regions} block_bytes={block_bytes}", field="cache"
            )
        per_block = block_bytes + 8
        blocks = (size_bytes - HEADER_BYTES - 4096) // (per_block * regions)
        if blocks < 4:
            raise InvalidArgument(
                f"cache size {size_bytes} is too small for {regions} regions "
                f"of {block_bytes}-byte blocks",
                field="cache_size",
            )
        total = _align(HEADER_BYTES + 8 * regions * blocks, 4096) + regions * blocks * block_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, total)  # backed now, or refused now
            except OSError as exc:
                os.close(fd)
                fd = -1
                os.unlink(path)
                raise StorageError(
                    f"cache: cannot allocate {total} bytes at {path}: {exc}"
                ) from exc
            mm = mmap.mmap(fd, total)
        finally:
            if fd >= 0:
                os.close(fd)
        HEADER.pack_into(mm, 0, CACHE_MAGIC, CACHE_VERSION, 0, block_bytes, regions, blocks)
        return cls(path, mm, block_bytes=block_bytes, regions=regions, blocks_per_region=blocks)

    @classmethod
    def open(cls, path: str) -> SharedCache:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise StorageError(f"cache: cannot open {path}: {exc}") from exc
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        magic, version, _, block_bytes, regions, blocks = HEADER.unpack_from(mm, 0)
        if magic != CACHE_MAGIC or version != CACHE_VERSION:
            mm.close()
            raise StorageError(f"cache: {path} is not a streamvault cache (v{CACHE_VERSION})")
        return cls(path, mm, block_bytes=block_bytes, regions=regions, blocks_per_region=blocks)

    # --- addressing -----------------------------------------------------------------------
    def _index(self, region: int, block: int) -> int:
        assert 0 <= region < self.regions and 0 <= block < self.blocks_per_region
        return region * self.blocks_per_region + block

    def generation(self, region: int, block: int) -> int:
        return int(self.generations[self._index(region, block)])

    def block_view(self, region: int, block: int) -> np.ndarray:
        start = self._index(region, block) * self.block_bytes
        return self.data[start : start + self.block_bytes]

    # --- writer side (the region's owner only) --------------------------------------------
    def claim(self, region: int, block: int) -> BlockRef:
        """Make `block` writable for new content: readers holding older refs will see their
        generation is gone."""
        index = self._index(region, block)
        generation = int(self.generations[index]) + 1
        self.generations[index] = generation
        return BlockRef(region, block, generation)

    def write(self, ref: BlockRef, offset: int, data: bytes | memoryview | np.ndarray) -> None:
        view = self.block_view(ref.region, ref.block)
        source = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        view[offset : offset + len(source)] = source

    def populate(self, region: int, stop: threading.Event | None = None) -> bool:
        """Fault in `region`'s pages of this mapping for writing, `POPULATE_CHUNK_BYTES` at a
        time until done or `stop` is set; its bytes are unchanged. tmpfs zeroes a fallocated
        page at its first touch, so without this the region's writer zeroes every page of
        its first pass over the ring inside its copies (clear_page was 35 % of a worker
        loop's samples at 60 MB/s). The GIL is released (ctypes); run it on a thread beside
        the writer. False if the kernel or the mapping refuses (then pages fault in as
        written, as before)."""
        libc = ctypes.CDLL(None, use_errno=True)
        region_bytes = self.blocks_per_region * self.block_bytes
        pos = int(self.data.ctypes.data) + region * region_bytes
        end = pos + region_bytes
        while pos < end:
            if stop is not None and stop.is_set():
                return True
            size = min(POPULATE_CHUNK_BYTES, end - pos)
            rc = libc.madvise(ctypes.c_void_p(pos), ctypes.c_size_t(size), MADV_POPULATE_WRITE)
            if rc != 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                return False
            pos += size
        return True

    # --- reader side (any process) ----------------------------------------------------------
    def read(self, ref: BlockRef, offset: int, length: int) -> bytes | None:
        """A copy of the bytes, or None if the block was reused since `ref` was taken."""
        if self.generation(ref.region, ref.block) != ref.generation:
            return None
        data = self.block_view(ref.region, ref.block)[offset : offset + length].tobytes()
        if self.generation(ref.region, ref.block) != ref.generation:
            return None
        return data

    def copy_into(self, ref: BlockRef, offset: int, out: memoryview) -> bool:
        """Copy bytes of a block into `out`; False if the block was reused (then `out`
        holds garbage and must not be used)."""
        if self.generation(ref.region, ref.block) != ref.generation:
            return False
        view = self.block_view(ref.region, ref.block)[offset : offset + len(out)]
        np.frombuffer(out, dtype=np.uint8)[:] = view
        return self.generation(ref.region, ref.block) == ref.generation

    def close(self) -> None:
        """Unmap, unless views are still out (then the mapping goes with the process)."""
        del self.generations, self.data
        try:
            self.mm.close()
        except BufferError:
            pass


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment
