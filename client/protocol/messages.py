"""Message types of the wire protocol.

Two kinds (after the ZeroMQ guide's "cheap and nasty"):
- data-path messages (setup append, append block and its ack, read and its reply) have fixed
  binary layouts (see codec.py) and are NamedTuples here; their payloads travel as separate
  zero-copy frames;
- control messages are msgspec Structs, msgpack-encoded and validated into these types; the
  struct's tag names the operation.

Event numbers are i64 >= 0; `NO_EVENT_NUMBER` (-1) means "none yet". Offsets are i64 >= 0;
`NO_OFFSET` (-1) means "no condition" on an append.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

import msgspec

NO_EVENT_NUMBER = -1
NO_OFFSET = -1


class MsgType(IntEnum):
    HELLO = 1
    HELLO_REPLY = 2
    ERROR = 3
    CONTROL = 4
    CONTROL_REPLY = 5
    SETUP_APPEND = 10
    APPEND_SETUP = 11
    APPEND_BLOCK = 12
    DATA_APPENDED = 13
    READ_SEGMENT = 14
    SEGMENT_READ = 15
    SEGMENT_READ_ZSTD = 16
    ADD_ENTRY = 20
    ENTRY_ADDED = 21
    READ_ENTRY = 22
    ENTRY_READ = 23


class Header(NamedTuple):
    version: int
    msg_type: int
    flags: int
    request_id: int
    timeout_ms: int


# --- data path ---------------------------------------------------------------------------
class SetupAppend(NamedTuple):
    writer_id: bytes  # 16 bytes
    segment: bytes


class AppendSetup(NamedTuple):
    writer_id: bytes
    last_event_number: int
    segment_length: int
    sealed: bool
    segment: bytes


class AppendBlock(NamedTuple):
    writer_id: bytes
    first_event_number: int
    last_event_number: int
    event_count: int
    expected_offset: int
    segment: bytes
    payload: Any  # bytes-like: bytes, memoryview, zmq.Frame, numpy array


class DataAppended(NamedTuple):
    writer_id: bytes
    last_event_number: int
    segment_length: int
    duplicate: bool
    segment: bytes


class ReadSegment(NamedTuple):
    offset: int
    max_bytes: int
    wait_ms: int
    segment: bytes


class SegmentRead(NamedTuple):
    offset: int
    segment_length: int
    end_of_segment: bool
    segment: bytes
    payload: list[Any]  # zero or more bytes-like frames, contiguous from `offset`


class SegmentReadZstd(NamedTuple):
    """A `SegmentRead` whose bytes travel as zstd frames, as LTS stores them (sent only to a
    `ReadSegment` flagged `FLAG_ZSTD_OK`): the frames decompress, in order, to `skip` bytes
    before `offset`, then the `raw_bytes` the reply carries from `offset`, then at most the
    rest of the last frame. Decoded into the `SegmentRead` it stands for."""

    offset: int
    segment_length: int
    end_of_segment: bool
    segment: bytes
    skip: int
    raw_bytes: int
    frames: list[Any]  # one or more zstd frames (with content size and checksum)


# bookie data path (ledger client -> bookie)
NO_ENTRY = -1


class AddEntry(NamedTuple):
    """Store entry `entry_id` of ledger `ledger_id`; `crc` is the CRC32C of the payload,
    which the bookie checks before journaling. `epoch` is the writer's log epoch: a ledger
    fenced at a higher epoch rejects the add (`Fenced`)."""

    ledger_id: int
    entry_id: int
    epoch: int
    lac: int
    crc: int
    payload: Any


class EntryAdded(NamedTuple):
    """The entry is durable on this bookie (its journal commit was fdatasync'd)."""

    ledger_id: int
    entry_id: int


class ReadEntry(NamedTuple):
    """Read one entry (or with entry_id NO_ENTRY only the ledger's state). With `fence` the
    bookie first durably fences the ledger at `epoch` (a recovery read: after it, adds of a
    lower epoch fail)."""

    ledger_id: int
    entry_id: int
    epoch: int
    fence: bool


class EntryRead(NamedTuple):
    """`payload` is empty and `found` False when the bookie does not hold the entry."""

    ledger_id: int
    entry_id: int
    last_entry_id: int
    lac: int
    fenced: bool
    found: bool
    payload: Any


class ErrorReply(NamedTuple):
    code: int
    message: str
    fields: dict[str, Any]


# --- control path ------------------------------------------------------------------------
class Hello(msgspec.Struct, frozen=True):
    min_version: int
    max_version: int
    client: str = ""


class HelloReply(msgspec.Struct, frozen=True):
    version: int
    role: str
    server_id: str
    incarnation: str
    instance: str = ""
    """Bookies: the lifetime of the data behind `server_id` (bookie_instance.py)."""


class Control(msgspec.Struct, frozen=True, tag=True):
    """Base of every control request and reply; the tag is the class name."""


# segment administration (worker)
class CreateSegment(Control):
    segment: str


class GetSegmentInfo(Control):
    segment: str


class SealSegment(Control):
    segment: str


class DeleteSegment(Control):
    segment: str


class TruncateSegment(Control):
    """Drop the segment's bytes below `offset` (reads below it get SegmentTruncated)."""

    segment: str
    offset: int


class SegmentInfo(Control):
    segment: str
    length: int
    start_offset: int
    sealed: bool
    exists: bool = True


# scopes and streams (controller)
class CreateScope(Control):
    scope: str


class DeleteScope(Control):
    scope: str


class ListScopes(Control):
    pass


class CreateStream(Control):
    scope: str
    stream: str
    initial_segments: int = 1


class GetStream(Control):
    scope: str
    stream: str


class ListStreams(Control):
    scope: str


class SealStream(Control):
    scope: str
    stream: str


class DeleteStream(Control):
    scope: str
    stream: str


class TruncateStream(Control):
    """Truncate each segment of a stream at its offset in `cut` (a stream cut)."""

    scope: str
    stream: str
    cut: dict[str, int]


class GetContainerMap(Control):
    pass


class CreateReaderGroup(Control):
    scope: str
    group: str
    streams: list[str]
    from_tail: bool = False


class GetReaderGroup(Control):
    scope: str
    group: str


class DeleteReaderGroup(Control):
    scope: str
    group: str


class Heartbeat(Control):
    """A process tells the controller it is alive (the registry behind `status`)."""

    role: str
    id: str
    pid: int
    endpoint: str
    state: str
    containers: list[int] = []
    info: dict[str, Any] = {}


class GetStatus(Control):
    pass


# uploads (worker -> uploader)
class UploadChunk(Control):
    """Store bytes [start, end) of a segment, read from shared-cache blocks, as chunk `chunk`.

    Each ref is (region, block, generation, offset in block, length), in segment order."""

    container: int
    epoch: int
    segment: str
    start: int
    end: int
    chunk: str
    refs: list[tuple[int, int, int, int, int]]


class ChunkUploaded(Control):
    chunk: str
    segment: str
    start: int
    end: int
    stored_bytes: int


# bookie control (ledger client -> bookie)
class DeleteLedger(Control):
    ledger_id: int


class ListLedgers(Control):
    """The ledgers a bookie holds with low <= id < high (orphan collection)."""

    low: int
    high: int


class LedgerIds(Control):
    ids: list[int]


class ListEntries(Control):
    """The entries of a ledger a bookie holds durably (recovery finds the entries of closed
    ledgers a bookie lacks, and copies them to it)."""

    ledger_id: int


class EntryRanges(Control):
    ranges: list[tuple[int, int]]
    """(first, last) entry ids, inclusive, ascending and disjoint."""


# replies
class Done(Control):
    """Reply of an operation that changes state; `changed` is False if it was already so."""

    changed: bool = True


class Names(Control):
    names: list[str]


class SegmentRange(msgspec.Struct, frozen=True):
    segment: str
    key_low: float
    key_high: float


class StreamInfo(Control):
    scope: str
    stream: str
    state: str
    segments: list[SegmentRange]


class ContainerMap(Control):
    container_count: int
    endpoints: dict[int, str]


class ReaderGroupInfo(Control):
    scope: str
    group: str
    streams: list[str]
    from_tail: bool
    state_segment: str


class ProcessInfo(msgspec.Struct, frozen=True):
    role: str
    id: str
    pid: int
    endpoint: str
    state: str
    containers: list[int] = []
    info: dict[str, Any] = {}
    age_s: float = 0.0


class Status(Control):
    processes: list[ProcessInfo]


CONTROL_TYPES: tuple[type[Control], ...] = (
    CreateSegment, GetSegmentInfo, SealSegment, DeleteSegment, SegmentInfo, TruncateSegment,
    TruncateStream,
    CreateScope, DeleteScope, ListScopes, CreateStream, GetStream, ListStreams, SealStream,
    DeleteStream, GetContainerMap, CreateReaderGroup, GetReaderGroup, DeleteReaderGroup,
    Heartbeat, GetStatus, Done, Names, StreamInfo, ContainerMap, ReaderGroupInfo, Status,
    UploadChunk, ChunkUploaded, DeleteLedger, ListLedgers, LedgerIds, ListEntries,
    EntryRanges,
)  # fmt: skip
