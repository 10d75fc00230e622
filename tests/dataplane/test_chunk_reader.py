"""The worker's LTS range reads (ChunkReader): exact bytes, and a sequential reader served
from the range read ahead for it instead of fetching and decompressing per request."""

from __future__ import annotations

import os

from streamvault.dataplane.storage import READ_AHEAD_BYTES, ChunkReader
from streamvault.lts.chunk_format import FRAME_RAW_BYTES, encode_chunk, read_index
from streamvault.lts.file_store import FileChunkStore

MIB = 1 << 20


class CountingStore(FileChunkStore):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[tuple[int, int]] = []

    def read(self, name: str, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read(name, offset, length)


def test_sequential_reads_decompress_each_byte_once(tmp_path):
    """1 MiB requests from an unaligned offset: each is served from the range read ahead
    for an earlier one, a reply that range ends inside is short, and the next request
    starts a fresh range there; so the chunk is fetched in READ_AHEAD_BYTES ranges, once."""
    raw = os.urandom(MIB) * 16  # 16 MiB, compressible
    store = CountingStore(str(tmp_path))
    chunk = encode_chunk(raw)
    store.create("c", chunk)
    reader = ChunkReader(store)
    reader.read("c", len(chunk), 0, 1)  # the index is read first
    store.reads.clear()
    got = bytearray()
    offset = 1
    while offset < len(raw):
        view = reader.read("c", len(chunk), offset, MIB)
        assert 0 < len(view) <= MIB
        got += view
        offset += len(view)
    assert bytes(got) == raw[1:]
    index = read_index(lambda o, n: chunk[o : o + n], len(chunk))
    assert [start for start, _ in store.reads] == [
        index.frame_offsets[pos // FRAME_RAW_BYTES]
        for pos in range(READ_AHEAD_BYTES, len(raw), READ_AHEAD_BYTES)  # after the first
    ], "one fetch per read-ahead range, none twice"
    assert len(reader.read("c", len(chunk), len(raw), MIB)) == 0, "nothing past the end"
    assert bytes(reader.read("c", len(chunk), len(raw) - 10, MIB)) == raw[-10:]


def test_reads_of_two_chunks_interleaved_each_use_their_own_range(tmp_path):
    store = CountingStore(str(tmp_path))
    raws = {name: os.urandom(64 * 1024) * 128 for name in ("a", "b")}  # 8 MiB each
    sizes = {}
    for name, raw in raws.items():
        chunk = encode_chunk(raw)
        store.create(name, chunk)
        sizes[name] = len(chunk)
    reader = ChunkReader(store)
    for offset in range(0, 8 * MIB, MIB):
        for name, raw in raws.items():
            assert bytes(reader.read(name, sizes[name], offset, MIB)) == raw[offset : offset + MIB]
    ranges = [r for r in store.reads if r[1] > 8192]  # not the footer/index reads
    assert len(ranges) == 2 * (8 * MIB // READ_AHEAD_BYTES), store.reads


def _decoded(frames) -> bytes:
    import zstandard

    return b"".join(zstandard.ZstdDecompressor().decompress(bytes(f)) for f in frames)


def test_stored_frames_decode_to_the_bytes_read_would_give(tmp_path):
    """A sequential reader taking stored frames: each reply's frames decompress to the
    bytes asked for (after `skip`), ends on a frame boundary after the first, and the chunk's
    stored bytes are fetched once per read-ahead span, never decoded by the reader here."""
    raw = (os.urandom(1000) * 6400)[: 6 * MIB + 100_000]  # compressible, short last frame
    store = CountingStore(str(tmp_path))
    chunk = encode_chunk(raw)
    store.create("c", chunk)
    reader = ChunkReader(store)
    offset, fetched = 12_345, 0
    while offset < len(raw):
        got = reader.read_frames("c", len(chunk), offset, MIB)
        assert got is not None
        assert 0 < got.raw_bytes <= MIB
        data = _decoded(got.frames)
        assert data[got.skip : got.skip + got.raw_bytes] == raw[offset : offset + got.raw_bytes]
        assert len(data) - got.skip - got.raw_bytes < FRAME_RAW_BYTES
        if offset % FRAME_RAW_BYTES == 0 and offset + got.raw_bytes < len(raw):
            assert got.raw_bytes == MIB  # aligned: whole frames up to the length asked for
        offset += got.raw_bytes
        fetched += 1
    assert reader.read_frames("c", len(chunk), len(raw), MIB) is None, "nothing past the end"
    index = read_index(lambda o, n: chunk[o : o + n], len(chunk))
    spans = [start for start, _ in store.reads if start in index.frame_offsets[:-1]]
    assert len(spans) == len(set(spans)) == -(-len(raw) // READ_AHEAD_BYTES), spans
    # a range already decoded for another reader goes as it is
    reader.read("c", len(chunk), 0, 10)
    assert reader.read_frames("c", len(chunk), 5, 10) is None


def test_raw_frames_are_never_sent_as_stored_frames(tmp_path):
    raw = os.urandom(2 * MIB)  # does not compress: stored raw
    store = CountingStore(str(tmp_path))
    chunk = encode_chunk(raw)
    store.create("c", chunk)
    reader = ChunkReader(store)
    assert reader.read_frames("c", len(chunk), 0, MIB) is None
    assert bytes(reader.read("c", len(chunk), 0, MIB)) == raw[:MIB]
