"""The format of a chunk in long-term storage: frames that decode independently, an index,
and a footer, so that a range read fetches and decompresses only the frames it needs.

    frame 0 | frame 1 | ... | frame n-1 | index | footer

- frame i holds raw bytes [i * frame_raw_bytes, min((i + 1) * frame_raw_bytes, raw_bytes)):
  one zstd frame (with its content checksum), or, where zstd does not make them smaller
  (video, encrypted or already compressed payloads), the raw bytes themselves (judged first
  from two 8 KiB samples, so such a frame costs no full compression try). A frame is
  stored raw exactly when its stored size equals its raw size (a zstd frame is always
  smaller: a compressed frame is kept only if it is), so the index needs no flag; a range
  read of raw frames returns a view of the bytes it fetched, with no decompression and no
  copy (version 2; version 1 chunks hold zstd frames only, and read as before);
- index: per frame, its stored size (u32) and the CRC32C of its stored bytes (u32): zstd's
  own checksum covers the content but not the frame header, and a raw frame has none, so
  every byte of a frame is covered here;
- footer (FOOTER, 40 bytes): magic, version, frame_raw_bytes, frame count, raw bytes,
  index offset, CRC32C of the index, CRC32C of the footer's first 32 bytes.

A damaged footer, index or frame is `DataCorruption` (a zstd frame that decodes to another
size than the index says, too). Chunks never change after they are written.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import accumulate
from typing import NamedTuple

import crc32c
import zstandard

from streamvault.client.protocol.compression import decode_frame_into
from streamvault.client.protocol.errors import DataCorruption, InvalidArgument

CHUNK_MAGIC = 0x4B435653  # b"SVCK" little-endian
CHUNK_VERSION = 2
"""Written; version 1 (zstd frames only) is read too."""
CHUNK_VERSIONS_READ = (1, 2)
FOOTER = struct.Struct("<IHHIIQQII")
FOOTER_BYTES = FOOTER.size
FRAME_RAW_BYTES = 256 * 1024
"""Raw bytes per frame: the unit a range read decompresses."""
COMPRESSION_LEVEL = 1
PROBE_BYTES = 8 * 1024
"""A frame is first judged by compressing this much of its start and of its middle..."""
PROBE_SAVING_MIN = 1 / 32
"""...and is stored raw, without compressing the whole of it, if neither sample shrinks by
this much (incompressible payloads: zstd's failed try cost 0.87 ms of CPU per MB here)."""
FRAMES_MAX = 1 << 20


class ScratchBuffer:
    """A growable buffer reused by one thread for call after call.

    A fresh multi-MiB allocation is a fresh mapping: every use pays a page fault per 4 KiB
    (measured here: `b"".join` of an 8 MiB chunk 16 ms, the compression itself 4 ms). A
    buffer reused across uploads is faulted in once. It grows to the largest size asked
    for and never shrinks, so its owner bounds it (the upload size limit). The view it
    returns is valid until the next `view()` call.
    """

    __slots__ = ("_buf", "_view")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._view: memoryview | None = None

    def view(self, size: int) -> memoryview:
        if self._view is not None:
            self._view.release()
            self._view = None
        if len(self._buf) < size:
            self._buf = bytearray(size)
        self._view = memoryview(self._buf)[:size]
        return self._view


class ChunkIndex(NamedTuple):
    raw_bytes: int
    frame_raw_bytes: int
    frame_offsets: tuple[int, ...]  # stored offset of each frame, plus the end
    frame_crcs: tuple[int, ...]
    index_offset: int
    version: int = CHUNK_VERSION

    def frame_is_raw(self, i: int) -> bool:
        """Frame `i` is stored as its raw bytes (not a zstd frame)."""
        if self.version < 2:
            return False
        raw = min(self.frame_raw_bytes, self.raw_bytes - i * self.frame_raw_bytes)
        return self.frame_offsets[i + 1] - self.frame_offsets[i] == raw

    @property
    def frame_count(self) -> int:
        return len(self.frame_offsets) - 1

    def frames_for(self, offset: int, length: int) -> range:
        """The frames holding raw bytes [offset, offset + length)."""
        if length <= 0 or offset >= self.raw_bytes:
            return range(0)
        first = offset // self.frame_raw_bytes
        last = (min(offset + length, self.raw_bytes) - 1) // self.frame_raw_bytes
        return range(first, last + 1)


def encode_chunk(
    data: bytes | memoryview,
    *,
    frame_raw_bytes: int = FRAME_RAW_BYTES,
    level: int = COMPRESSION_LEVEL,
    out: ScratchBuffer | None = None,
) -> bytes | memoryview:
    """Compress `data` into one chunk: bytes, or with `out` a view of `out` (valid until
    its next use), which spares a fresh allocation of the chunk's size per call. A frame
    zstd does not shrink is stored raw, and so is one whose samples say zstd would barely
    shrink it (`_incompressible`: the whole frame is then not compressed at all)."""
    if frame_raw_bytes <= 0:
        raise InvalidArgument(f"frame_raw_bytes={frame_raw_bytes} must be > 0", field="frame")
    view = memoryview(data).cast("B")
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    frames: list[bytes | memoryview] = []
    probe = True  # at the start and after a raw frame; a frame that compressed is not probed
    for pos in range(0, len(view), frame_raw_bytes):
        piece = view[pos : pos + frame_raw_bytes]
        if probe and _incompressible(compressor, piece):
            frames.append(piece)
            continue
        packed = compressor.compress(piece)
        probe = len(packed) >= len(piece)
        frames.append(piece if probe else packed)
    if len(frames) > FRAMES_MAX:
        raise InvalidArgument(
            f"chunk of {len(view)} bytes needs {len(frames)} frames > {FRAMES_MAX}", field="data"
        )
    index = b"".join(struct.pack("<II", len(f), crc32c.crc32c(f)) for f in frames)
    index_offset = sum(map(len, frames))
    head = struct.pack(
        "<IHHIIQQI",
        CHUNK_MAGIC,
        CHUNK_VERSION,
        0,
        frame_raw_bytes,
        len(frames),
        len(view),
        index_offset,
        crc32c.crc32c(index),
    )
    footer = head + struct.pack("<I", crc32c.crc32c(head))
    if out is None:
        return b"".join([*frames, index, footer])
    parts = [*frames, index, footer]
    chunk = out.view(index_offset + len(index) + len(footer))
    pos = 0
    for part in parts:
        chunk[pos : pos + len(part)] = part
        pos += len(part)
    return chunk


def _incompressible(compressor: zstandard.ZstdCompressor, piece: memoryview) -> bool:
    """True if samples say zstd would not shrink `piece` by PROBE_SAVING_MIN (a frame too
    small to sample is compressed whole)."""
    if len(piece) < 4 * PROBE_BYTES:
        return False
    for start in (0, len(piece) // 2):
        sample = piece[start : start + PROBE_BYTES]
        if len(compressor.compress(sample)) < len(sample) * (1 - PROBE_SAVING_MIN):
            return False
    return True


def parse_tail(tail: bytes, chunk_bytes: int) -> ChunkIndex:
    """Parse the index and footer from the last bytes of a chunk (`tail` must hold at least
    the footer; `index_bytes(...)` says how much more is needed for the index)."""
    if len(tail) < FOOTER_BYTES:
        raise DataCorruption(f"chunk footer: {len(tail)} bytes < {FOOTER_BYTES}")
    footer = tail[-FOOTER_BYTES:]
    magic, version, _, frame_raw, count, raw, index_offset, index_crc, crc = FOOTER.unpack(footer)
    if magic != CHUNK_MAGIC or crc != crc32c.crc32c(footer[:-4]):
        raise DataCorruption("chunk footer: bad magic or checksum")
    if version not in CHUNK_VERSIONS_READ:
        raise DataCorruption(f"chunk footer: version {version} not one of {CHUNK_VERSIONS_READ}")
    index_len = 8 * count
    if index_offset + index_len + FOOTER_BYTES != chunk_bytes or frame_raw <= 0:
        raise DataCorruption(
            f"chunk footer: index at {index_offset} (+{index_len}) does not "
            f"fit a chunk of {chunk_bytes} bytes"
        )
    if len(tail) < index_len + FOOTER_BYTES:
        raise ValueError("tail too short for the index")
    index = tail[-FOOTER_BYTES - index_len : -FOOTER_BYTES] if index_len else b""
    if crc32c.crc32c(index) != index_crc:
        raise DataCorruption("chunk index: checksum mismatch")
    pairs = struct.unpack(f"<{2 * count}I", index)
    offsets = (0, *accumulate(pairs[0::2]))
    if offsets[-1] != index_offset or count != -(-raw // frame_raw):
        raise DataCorruption("chunk index: frame sizes do not add up")
    return ChunkIndex(raw, frame_raw, offsets, pairs[1::2], index_offset, version)


def read_index(read: Callable[[int, int], bytes], chunk_bytes: int) -> ChunkIndex:
    """Fetch and parse a chunk's index with at most two range reads."""
    if chunk_bytes < FOOTER_BYTES:
        raise DataCorruption(f"chunk of {chunk_bytes} bytes is shorter than its footer")
    guess = min(chunk_bytes, FOOTER_BYTES + 4096)
    tail = read(chunk_bytes - guess, guess)
    count = FOOTER.unpack(tail[-FOOTER_BYTES:])[4]
    need = FOOTER_BYTES + 8 * count
    if need > len(tail) and need <= chunk_bytes:
        tail = read(chunk_bytes - need, need)
    return parse_tail(tail, chunk_bytes)


def fetch_frames(
    read: Callable[[int, int], bytes], index: ChunkIndex, frames: range
) -> tuple[memoryview, list[memoryview]]:
    """The stored bytes of `frames` in one read: (their whole span, a view of each frame in
    it), every frame checked against its CRC32C. Raises DataCorruption on a short read or a
    mismatch."""
    start = index.frame_offsets[frames.start]
    span = memoryview(read(start, index.frame_offsets[frames.stop] - start))
    if len(span) != index.frame_offsets[frames.stop] - start:
        raise DataCorruption(f"chunk frames {frames.start}-{frames.stop - 1}: read short")
    views = [
        span[index.frame_offsets[i] - start : index.frame_offsets[i + 1] - start] for i in frames
    ]
    for i, frame in zip(frames, views, strict=True):
        if crc32c.crc32c(frame) != index.frame_crcs[i]:
            raise DataCorruption(f"chunk frame {i}: checksum mismatch")
    return span, views


def read_range(
    read: Callable[[int, int], bytes], index: ChunkIndex, offset: int, length: int
) -> memoryview | bytes:
    """Raw bytes [offset, offset + length) of a chunk (short at its end), fetching the
    stored span of only the frames involved in one range read.

    Where every frame involved is stored raw, the result is a view of the fetched span
    itself (no copy). Otherwise the frames are decoded straight into one buffer (zstd
    `readinto`, raw frames copied): no bytes object per frame and no join, which costs
    several times the decompression itself. The result is a view of that buffer. (A fresh
    anonymous mapping per read instead of the bytearray cost 1.71 ms of worker CPU per MB
    read against 0.92 in `bench_catchup --reader-sched idle --runs 3`: every read faults in
    its pages anew, where the allocator reuses the memory of the read before.)"""
    if offset < 0 or length < 0:
        raise InvalidArgument(f"read_range: offset={offset} length={length}", field="range")
    frames = index.frames_for(offset, length)
    if not frames:
        return b""
    span, views = fetch_frames(read, index, frames)
    raw = [index.frame_is_raw(i) for i in frames]
    first_raw = frames.start * index.frame_raw_bytes
    skip = offset - first_raw
    if all(raw):  # stored as is: a view of what was read
        return span[skip : skip + length]
    size = min(frames.stop * index.frame_raw_bytes, index.raw_bytes) - first_raw
    out = memoryview(bytearray(size))
    decompressor = zstandard.ZstdDecompressor()
    for i, frame, is_raw in zip(frames, views, raw, strict=True):
        lo = i * index.frame_raw_bytes - first_raw
        hi = min(lo + index.frame_raw_bytes, len(out))
        if is_raw:
            out[lo:hi] = frame
            continue
        try:
            exact = decode_frame_into(decompressor, frame, out[lo:hi])
        except zstandard.ZstdError as exc:
            raise DataCorruption(f"chunk frame {i}: {exc}") from exc
        if not exact:
            raise DataCorruption(f"chunk frame {i}: does not hold {hi - lo} raw bytes")
    return out[skip : skip + length]
