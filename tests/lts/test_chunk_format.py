"""The LTS chunk format: any range reads back exactly, fetching only the frames it needs;
damage anywhere is DataCorruption."""

from __future__ import annotations

import os

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvault.client.protocol.errors import DataCorruption
from streamvault.lts.chunk_format import (
    FOOTER_BYTES,
    ScratchBuffer,
    encode_chunk,
    read_index,
    read_range,
)


class Blob:
    """A chunk in memory that records the range reads made of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []
        self.returned: list[bytes] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.returned.append(self.data[offset : offset + length])
        return self.returned[-1]


def compressible(size: int) -> bytes:
    return (b"sensor-17 temp=21.5C " * (size // 21 + 1))[:size]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 300_000), st.integers(1, 70_000), st.data())
def test_any_range_reads_back_exactly(size, frame, data):
    raw = os.urandom(size // 2) + bytes(size - size // 2)  # half noise, half compressible
    blob = Blob(encode_chunk(raw, frame_raw_bytes=frame))
    index = read_index(blob.read, len(blob.data))
    assert index.raw_bytes == size
    offset = data.draw(st.integers(0, size + 10))
    length = data.draw(st.integers(0, size + 10))
    blob.reads.clear()
    assert read_range(blob.read, index, offset, length) == raw[offset : offset + length]
    assert len(blob.reads) <= 1, "one range read per call"
    for start, count in blob.reads:  # only the frames overlapping the range were fetched
        first = offset // frame
        assert start == index.frame_offsets[first]
        assert count == index.frame_offsets[index.frames_for(offset, length).stop] - start


def test_index_needs_at_most_two_reads_even_with_many_frames():
    raw = os.urandom(3_000_000)
    blob = Blob(encode_chunk(raw, frame_raw_bytes=1024))  # 2930 frames: index > first guess
    index = read_index(blob.read, len(blob.data))
    assert len(blob.reads) == 2 and index.frame_count == 2930


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200_000), st.booleans(), st.data())
def test_damage_anywhere_is_detected(size, noise, data):
    raw = os.urandom(size) if noise else compressible(size)  # raw frames, zstd frames
    chunk = bytearray(encode_chunk(raw, frame_raw_bytes=16_384))
    pos = data.draw(st.integers(0, len(chunk) - 1))
    chunk[pos] ^= 1 << data.draw(st.integers(0, 7))
    blob = Blob(bytes(chunk))
    with pytest.raises(DataCorruption):
        index = read_index(blob.read, len(chunk))
        got = read_range(blob.read, index, 0, size)
        assert got == raw  # a flip that still decodes must still be caught above
        raise AssertionError("damage not detected")


def test_empty_chunk_and_truncated_chunk():
    blob = Blob(encode_chunk(b""))
    index = read_index(blob.read, len(blob.data))
    assert index.raw_bytes == 0 and read_range(blob.read, index, 0, 10) == b""
    short = Blob(encode_chunk(b"x" * 1000)[:-1])
    with pytest.raises(DataCorruption):
        read_index(short.read, len(short.data))
    with pytest.raises(DataCorruption):
        read_index(Blob(b"tiny").read, FOOTER_BYTES - 1)


def test_encoding_into_a_reused_buffer_gives_the_same_chunk():
    """The uploader encodes into one reused buffer per thread: each chunk is byte-identical
    to a freshly allocated encoding, and a smaller chunk after a larger one is not followed
    by the larger one's leftover bytes."""
    scratch = ScratchBuffer()
    for raw in (os.urandom(600_000), b"abc" * 50_000, b"", os.urandom(10)):
        fresh = encode_chunk(raw, frame_raw_bytes=65_536)
        reused = encode_chunk(raw, frame_raw_bytes=65_536, out=scratch)
        assert bytes(reused) == fresh
        blob = Blob(bytes(reused))
        index = read_index(blob.read, len(blob.data))
        assert read_range(blob.read, index, 0, len(raw)) == raw


def test_a_scratch_view_is_released_when_the_buffer_is_reused():
    scratch = ScratchBuffer()
    first = scratch.view(100)
    scratch.view(1_000_000)  # grows: the old view must not pin the old buffer
    with pytest.raises(ValueError):
        first[0]


@pytest.mark.parametrize("claimed", [8_192, 32_768])
def test_a_frame_that_decodes_to_another_size_than_the_index_says_is_corruption(claimed):
    """Frames decode straight into one buffer sized from the index: a frame holding fewer
    raw bytes (claimed 32 KiB) or more (claimed 8 KiB) than the index says is detected, not
    returned short or cut."""
    raw = compressible(64 * 1024)  # zstd frames (raw frames are sized by the index)
    blob = Blob(encode_chunk(raw, frame_raw_bytes=16_384))
    index = read_index(blob.read, len(blob.data))
    assert not any(index.frame_is_raw(i) for i in range(index.frame_count))
    assert read_range(blob.read, index, 0, len(raw)) == raw
    lying = index._replace(frame_raw_bytes=claimed)
    with pytest.raises(DataCorruption, match="does not hold"):
        read_range(blob.read, lying, 0, claimed)


def test_frames_zstd_does_not_shrink_are_stored_raw_and_read_without_a_copy():
    """Incompressible payloads (video, encrypted data) cost no decompression on read: the
    chunk holds them as they are, and a range read returns a view of the bytes it fetched."""
    raw = os.urandom(100_000) + compressible(50_000)
    chunk = encode_chunk(raw, frame_raw_bytes=25_000)
    blob = Blob(bytes(chunk))
    index = read_index(blob.read, len(blob.data))
    assert [index.frame_is_raw(i) for i in range(index.frame_count)] == [True] * 4 + [False] * 2
    assert index.frame_offsets[4] == 100_000  # stored as is
    got = read_range(blob.read, index, 30_000, 40_000)
    assert isinstance(got, memoryview) and got.obj is blob.returned[-1]
    assert got == raw[30_000:70_000]
    mixed = read_range(blob.read, index, 90_000, 30_000)  # a raw frame and a zstd frame
    assert bytes(mixed) == raw[90_000:120_000]


def test_a_frame_judged_incompressible_by_its_samples_is_stored_raw_uncompressed(monkeypatch):
    """Two samples (start, middle) decide without compressing the whole frame; a frame that
    compressed is not probed again, and one after a raw frame is."""
    from streamvault.lts import chunk_format

    frame = 64 * 1024
    noise = os.urandom(frame)
    fooled = bytearray(compressible(frame))  # only its sampled windows are noise
    fooled[: chunk_format.PROBE_BYTES] = noise[: chunk_format.PROBE_BYTES]
    half = frame // 2
    fooled[half : half + chunk_format.PROBE_BYTES] = noise[: chunk_format.PROBE_BYTES]
    raw = noise + bytes(fooled) + compressible(2 * frame) + noise + compressible(frame)
    sizes: list[int] = []
    real = chunk_format.zstandard.ZstdCompressor

    class Counting:
        def __init__(self, **kw):
            self.inner = real(**kw)

        def compress(self, data):
            sizes.append(len(data))
            return self.inner.compress(data)

    monkeypatch.setattr(chunk_format.zstandard, "ZstdCompressor", Counting)
    chunk = encode_chunk(raw, frame_raw_bytes=frame)
    blob = Blob(bytes(chunk))
    index = read_index(blob.read, len(blob.data))
    assert [index.frame_is_raw(i) for i in range(index.frame_count)] == [
        True,  # noise: both samples say so
        True,  # its samples are noise: stored raw, though the rest would compress
        False,  # probed (after a raw frame): one sample, then compressed whole
        False,  # not probed, compressed whole
        True,  # noise, not probed: compressed whole, kept raw (zstd did not shrink it)
        False,  # probed again after that raw frame
    ]
    p = chunk_format.PROBE_BYTES
    assert sizes == [p, p, p, p, p, frame, frame, frame, p, frame]
    assert read_range(blob.read, index, 0, len(raw)) == raw


def test_a_version_1_chunk_still_reads():
    """Version 1 chunks (zstd frames only) read as before: no frame is taken for raw."""
    raw = compressible(70_000)
    chunk = bytearray(encode_chunk(raw, frame_raw_bytes=16_384))
    footer = FOOTER_BYTES
    chunk[-footer + 4 : -footer + 6] = (1).to_bytes(2, "little")
    chunk[-4:] = crc32c.crc32c(bytes(chunk[-footer:-4])).to_bytes(4, "little")
    blob = Blob(bytes(chunk))
    index = read_index(blob.read, len(blob.data))
    assert index.version == 1
    assert read_range(blob.read, index, 1_000, 50_000) == raw[1_000:51_000]
