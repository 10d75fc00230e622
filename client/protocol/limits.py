"""Named limits of the wire protocol, shared by clients and servers.

Every size, count and wait that crosses a process boundary is bounded by a constant here.
Servers check them before touching a body; clients check them before sending.
"""

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

PROTOCOL_VERSION: Final = 1
"""The version this build speaks; `Hello` agrees on one in [PROTOCOL_VERSION_MIN, this]."""
PROTOCOL_VERSION_MIN: Final = 1

EVENT_HEADER_BYTES: Final = 4
"""Each event in a segment is a little-endian u32 length followed by the event's bytes."""
EVENT_BYTES_MAX: Final = 8 * MIB
"""Largest event payload a writer may append."""
BLOCK_BYTES_MAX: Final = EVENT_BYTES_MAX + EVENT_HEADER_BYTES
"""Largest append block payload: many small framed events, or exactly one large one."""
BLOCK_EVENTS_MAX: Final = BLOCK_BYTES_MAX // EVENT_HEADER_BYTES
"""An event takes at least its header, so no valid block holds more events than this."""
FRAME_BYTES_MAX: Final = 16 * MIB
"""Largest single ZeroMQ frame a server accepts; larger ones drop the connection unread."""
ENTRY_BYTES_MAX: Final = 9 * MIB
"""Largest ledger entry a bookie stores: one durable-log record (a group-commit frame, or
one block of the largest event with its operation header)."""
CONTROL_BYTES_MAX: Final = 1 * MIB
"""Largest msgpack-encoded control body."""
SEGMENT_NAME_BYTES_MAX: Final = 512
NAME_CHARS_MAX: Final = 200
"""Longest scope, stream, reader-group or reader name."""
SEGMENTS_PER_STREAM_MAX: Final = 1024
READ_BYTES_MAX: Final = 4 * MIB
"""Largest number of bytes one `ReadSegment` reply carries."""
ZSTD_FRAME_RAW_MAX: Final = 1 * MIB
"""Largest decompressed size of one frame of a `SegmentReadZstd` reply (LTS chunk frames
are 256 KiB); so a reply decompresses to at most its bytes plus two frames' worth."""
TAIL_WAIT_MS_MAX: Final = 60_000
"""Longest a tail read may wait for new data before answering with nothing."""
REQUEST_TIMEOUT_MS_MAX: Final = 300_000
CREDIT_BYTES_PER_CONNECTION: Final = 128 * MIB
"""Unacknowledged append bytes one connection may have outstanding at a worker."""
INVALID_MESSAGES_BEFORE_DISCONNECT: Final = 16
"""A peer that sends this many malformed messages is no longer answered."""
