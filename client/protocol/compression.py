"""zstd frames decoded straight into a caller's buffer: the chunk format's range reads (lts)
and the client's `SegmentReadZstd` replies both decode this way, so no bytes object is made
per frame and no join follows."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zstandard


def decode_frame_into(
    decompressor: zstandard.ZstdDecompressor, frame: memoryview | bytes, out: memoryview
) -> bool:
    """Decode one zstd frame into `out`; True if it held exactly `len(out)` bytes (not
    fewer, not more). Raises zstandard.ZstdError on a corrupt frame."""
    pos = 0
    with decompressor.stream_reader(frame) as reader:
        while pos < len(out) and (got := reader.readinto(out[pos:])) > 0:
            pos += got
        return pos == len(out) and not reader.read(1)
