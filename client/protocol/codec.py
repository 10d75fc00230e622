"""Encode and decode wire messages (ZeroMQ multipart).

Frame 0 is `Header` (16 bytes: version u8, type u8, flags u16, request id u64, timeout ms
u32) followed by the message's typed fields; payload frames follow, sent and received
without copies. Data-path fields use the fixed layouts below; control fields are msgpack
(msgspec, validated into the structs of messages.py).

Decoding never raises anything but `InvalidMessage` (or `UnsupportedVersion` for a header
of a version this build does not speak), whatever the bytes: truncated, garbage, negative
counts, inconsistent lengths. Sizes are checked before bodies are touched.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import Any, Union

import msgspec

from streamvault.client.protocol import messages as m
from streamvault.client.protocol.compression import decode_frame_into
from streamvault.client.protocol.errors import (
    InvalidMessage,
    StreamVaultError,
    UnsupportedVersion,
)
from streamvault.client.protocol.limits import (
    BLOCK_EVENTS_MAX,
    CONTROL_BYTES_MAX,
    ENTRY_BYTES_MAX,
    PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN,
    READ_BYTES_MAX,
    REQUEST_TIMEOUT_MS_MAX,
    SEGMENT_NAME_BYTES_MAX,
    TAIL_WAIT_MS_MAX,
    ZSTD_FRAME_RAW_MAX,
)

_request_ids = itertools.count(1)


def next_request_id() -> int:
    """A process-wide unique request id (replies echo it)."""
    return next(_request_ids)


HEADER = struct.Struct("<BBHQI")
HEADER_BYTES = HEADER.size
WRITER_ID_BYTES = 16
U64_MAX = (1 << 64) - 1
I64_MAX = (1 << 63) - 1

# Fixed layouts of the data-path fields (after the header). Each ends with the byte length of
# the segment name that closes the frame; blocks and read replies also carry their payload's
# byte length, so a truncated or padded frame is always detected.
SETUP_APPEND = struct.Struct("<16sH")  # writer id, name bytes
APPEND_SETUP = struct.Struct("<16sqqBH")  # writer id, last event, length, sealed, name bytes
APPEND_BLOCK = struct.Struct("<16sqqIqIH")  # writer id, first, last, count, expected offset,
#                                             payload bytes, name bytes
DATA_APPENDED = struct.Struct("<16sqqBH")  # writer id, last event, length, duplicate, name bytes
READ_SEGMENT = struct.Struct("<qIIH")  # offset, max bytes, wait ms, name bytes
SEGMENT_READ = struct.Struct("<qqBIH")  # offset, length, end of segment, payload bytes, name
SEGMENT_READ_ZSTD = struct.Struct("<qqBIIIH")  # offset, length, end of segment, raw bytes,
#                                               skip, payload (stored) bytes, name bytes
ERROR = struct.Struct("<H")
ADD_ENTRY = struct.Struct("<QQQqII")  # ledger, entry, epoch, lac, crc32c, payload bytes
ENTRY_ADDED = struct.Struct("<QQ")  # ledger, entry
READ_ENTRY = struct.Struct("<QqQB")  # ledger, entry (-1: state only), epoch, fence
ENTRY_READ = struct.Struct("<QqqqBBI")  # ledger, entry, last entry, lac, fenced, found, bytes

_control_encoder = msgspec.msgpack.Encoder()
_control_decoder = msgspec.msgpack.Decoder(Union[m.CONTROL_TYPES])  # noqa: UP007
_hello_decoder = msgspec.msgpack.Decoder(m.Hello)
_hello_reply_decoder = msgspec.msgpack.Decoder(m.HelloReply)
_error_body_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def _view(frame: Any) -> memoryview:
    """A read-only byte view of a frame (bytes, memoryview, zmq.Frame, numpy array)."""
    buffer = getattr(frame, "buffer", None)
    if buffer is not None and not callable(buffer):
        frame = buffer
    try:
        view = memoryview(frame)
    except TypeError as exc:
        raise InvalidMessage(f"frame of type {type(frame).__name__} is not bytes-like") from exc
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _nbytes(frame: Any) -> int:
    return _view(frame).nbytes


def encode_header(
    msg_type: int,
    request_id: int,
    *,
    flags: int = 0,
    timeout_ms: int = 0,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    return HEADER.pack(version, msg_type, flags, request_id, timeout_ms)


def decode_header(frame0: Any) -> m.Header:
    view = _view(frame0)
    if len(view) < HEADER_BYTES:
        raise InvalidMessage(f"header: {len(view)} bytes < {HEADER_BYTES}")
    header = m.Header(*HEADER.unpack_from(view, 0))
    if not PROTOCOL_VERSION_MIN <= header.version <= PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"header: version {header.version} not in {PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION}",
            min_version=PROTOCOL_VERSION_MIN,
            max_version=PROTOCOL_VERSION,
            request_id=header.request_id,
        )
    if header.timeout_ms > REQUEST_TIMEOUT_MS_MAX:
        raise InvalidMessage(f"header: timeout_ms={header.timeout_ms} > {REQUEST_TIMEOUT_MS_MAX}")
    return header


def _name(view: memoryview, start: int, size: int, what: str) -> bytes:
    if not 0 < size <= SEGMENT_NAME_BYTES_MAX:
        raise InvalidMessage(
            f"{what}: segment name length {size} not in 1..{SEGMENT_NAME_BYTES_MAX}"
        )
    if len(view) - start != size:
        raise InvalidMessage(f"{what}: {len(view) - start} name bytes, expected {size}")
    name = bytes(view[start:])
    try:
        name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"{what}: segment name is not UTF-8") from exc
    return name


def _fields(view: memoryview, layout: struct.Struct, what: str) -> tuple:
    if len(view) < HEADER_BYTES + layout.size:
        raise InvalidMessage(f"{what}: {len(view)} bytes < {HEADER_BYTES + layout.size}")
    return layout.unpack_from(view, HEADER_BYTES)


def _frame_count(frames: Sequence[Any], expected: int, what: str) -> None:
    if len(frames) != expected:
        raise InvalidMessage(f"{what}: {len(frames)} frames, expected {expected}")


# --- encoders ----------------------------------------------------------------------------
def encode(body: Any, request_id: int, *, timeout_ms: int = 0, flags: int = 0) -> list[Any]:
    """Frames of one message; payload objects are returned as-is for zero-copy sending."""
    if isinstance(body, m.AppendBlock):
        head = encode_header(m.MsgType.APPEND_BLOCK, request_id, flags=flags, timeout_ms=timeout_ms)
        fields = APPEND_BLOCK.pack(
            body.writer_id,
            body.first_event_number,
            body.last_event_number,
            body.event_count,
            body.expected_offset,
            _nbytes(body.payload),
            len(body.segment),
        )
        return [head + fields + body.segment, body.payload]
    if isinstance(body, m.DataAppended):
        head = encode_header(m.MsgType.DATA_APPENDED, request_id, flags=flags)
        return [
            head
            + DATA_APPENDED.pack(
                body.writer_id,
                body.last_event_number,
                body.segment_length,
                body.duplicate,
                len(body.segment),
            )
            + body.segment
        ]
    if isinstance(body, m.SetupAppend):
        head = encode_header(m.MsgType.SETUP_APPEND, request_id, flags=flags, timeout_ms=timeout_ms)
        return [head + SETUP_APPEND.pack(body.writer_id, len(body.segment)) + body.segment]
    if isinstance(body, m.AppendSetup):
        head = encode_header(m.MsgType.APPEND_SETUP, request_id, flags=flags)
        return [
            head
            + APPEND_SETUP.pack(
                body.writer_id,
                body.last_event_number,
                body.segment_length,
                body.sealed,
                len(body.segment),
            )
            + body.segment
        ]
    if isinstance(body, m.ReadSegment):
        head = encode_header(m.MsgType.READ_SEGMENT, request_id, flags=flags, timeout_ms=timeout_ms)
        return [
            head
            + READ_SEGMENT.pack(body.offset, body.max_bytes, body.wait_ms, len(body.segment))
            + body.segment
        ]
    if isinstance(body, m.SegmentReadZstd):
        head = encode_header(m.MsgType.SEGMENT_READ_ZSTD, request_id, flags=flags)
        return [
            head
            + SEGMENT_READ_ZSTD.pack(
                body.offset,
                body.segment_length,
                body.end_of_segment,
                body.raw_bytes,
                body.skip,
                sum(_nbytes(f) for f in body.frames),
                len(body.segment),
            )
            + body.segment,
            *body.frames,
        ]
    if isinstance(body, m.SegmentRead):
        head = encode_header(m.MsgType.SEGMENT_READ, request_id, flags=flags)
        total = sum(_nbytes(part) for part in body.payload)
        return [
            head
            + SEGMENT_READ.pack(
                body.offset, body.segment_length, body.end_of_segment, total, len(body.segment)
            )
            + body.segment,
            *body.payload,
        ]
    if isinstance(body, m.AddEntry):
        head = encode_header(m.MsgType.ADD_ENTRY, request_id, flags=flags, timeout_ms=timeout_ms)
        fields = ADD_ENTRY.pack(
            body.ledger_id, body.entry_id, body.epoch, body.lac, body.crc, _nbytes(body.payload)
        )
        return [head + fields, body.payload]
    if isinstance(body, m.EntryAdded):
        head = encode_header(m.MsgType.ENTRY_ADDED, request_id, flags=flags)
        return [head + ENTRY_ADDED.pack(body.ledger_id, body.entry_id)]
    if isinstance(body, m.ReadEntry):
        head = encode_header(m.MsgType.READ_ENTRY, request_id, flags=flags, timeout_ms=timeout_ms)
        return [head + READ_ENTRY.pack(body.ledger_id, body.entry_id, body.epoch, body.fence)]
    if isinstance(body, m.EntryRead):
        head = encode_header(m.MsgType.ENTRY_READ, request_id, flags=flags)
        fields = ENTRY_READ.pack(
            body.ledger_id,
            body.entry_id,
            body.last_entry_id,
            body.lac,
            body.fenced,
            body.found,
            _nbytes(body.payload),
        )
        return [head + fields, body.payload]
    if isinstance(body, m.ErrorReply):
        return encode_error(request_id, body.code, body.message, body.fields)
    if isinstance(body, m.Hello):
        head = encode_header(m.MsgType.HELLO, request_id, flags=flags, timeout_ms=timeout_ms)
        return [head + _control_encoder.encode(body)]
    if isinstance(body, m.HelloReply):
        return [encode_header(m.MsgType.HELLO_REPLY, request_id) + _control_encoder.encode(body)]
    if isinstance(body, m.Control):
        kind = m.MsgType.CONTROL_REPLY if flags & FLAG_REPLY else m.MsgType.CONTROL
        head = encode_header(kind, request_id, timeout_ms=timeout_ms)
        return [head + _control_encoder.encode(body)]
    raise TypeError(f"encode: no wire form for {type(body).__name__}")


FLAG_REPLY = 1
"""Set on control messages that are replies (CONTROL_REPLY); ignored on other types."""
FLAG_ZSTD_OK = 2
"""On a `ReadSegment`: the reader takes its bytes as zstd frames (`SegmentReadZstd`)."""


def encode_reply(body: m.Control, request_id: int) -> list[Any]:
    return encode(body, request_id, flags=FLAG_REPLY)


def hello_reply(
    msg: m.Hello, *, role: str, server_id: str, incarnation: str, instance: str = ""
) -> m.HelloReply:
    """The server's answer to `Hello`: the highest version both speak, or UnsupportedVersion
    carrying the range this build supports (every server answers the same way)."""
    if msg.max_version < PROTOCOL_VERSION_MIN or msg.min_version > PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"hello: client versions {msg.min_version}..{msg.max_version} do not meet "
            f"{PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION} ({role})",
            min_version=PROTOCOL_VERSION_MIN,
            max_version=PROTOCOL_VERSION,
        )
    version = min(msg.max_version, PROTOCOL_VERSION)
    return m.HelloReply(version, role, server_id, incarnation, instance)


def encode_error(
    request_id: int, code: int, message: str, fields: dict[str, Any] | None = None
) -> list[bytes]:
    body = _control_encoder.encode({"message": message, "fields": fields or {}})
    return [encode_header(m.MsgType.ERROR, request_id) + ERROR.pack(code) + body]


def encode_exception(request_id: int, exc: StreamVaultError) -> list[bytes]:
    return encode_error(request_id, exc.code, exc.message, _plain(exc.fields))


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif not isinstance(value, (int, float, str, bool, type(None), list, dict)):
            value = str(value)
        out[key] = value
    return out


# --- decoders ----------------------------------------------------------------------------
def decode(frames: Sequence[Any]) -> tuple[m.Header, Any]:
    """Decode a whole message into (Header, typed body). Raises only InvalidMessage or
    UnsupportedVersion."""
    if not frames:
        raise InvalidMessage("message has no frames")
    view = _view(frames[0])
    header = decode_header(view)
    decoder = _DECODERS.get(header.msg_type)
    if decoder is None:
        raise InvalidMessage(f"unknown message type {header.msg_type}")
    return header, decoder(view, frames)


def _decode_setup_append(view: memoryview, frames: Sequence[Any]) -> m.SetupAppend:
    _frame_count(frames, 1, "SetupAppend")
    writer_id, name_bytes = _fields(view, SETUP_APPEND, "SetupAppend")
    segment = _name(view, HEADER_BYTES + SETUP_APPEND.size, name_bytes, "SetupAppend")
    return m.SetupAppend(writer_id, segment)


def _decode_append_setup(view: memoryview, frames: Sequence[Any]) -> m.AppendSetup:
    _frame_count(frames, 1, "AppendSetup")
    writer_id, last, length, sealed, name_bytes = _fields(view, APPEND_SETUP, "AppendSetup")
    if last < m.NO_EVENT_NUMBER or length < 0 or sealed > 1:
        raise InvalidMessage(f"AppendSetup: last={last} length={length} sealed={sealed}")
    segment = _name(view, HEADER_BYTES + APPEND_SETUP.size, name_bytes, "AppendSetup")
    return m.AppendSetup(writer_id, last, length, bool(sealed), segment)


def decode_append_block(view: memoryview, frames: Sequence[Any]) -> m.AppendBlock:
    _frame_count(frames, 2, "AppendBlock")
    writer_id, first, last, count, expected, payload_bytes, name_bytes = _fields(
        view, APPEND_BLOCK, "AppendBlock"
    )
    if first < 0 or last < 0 or expected < m.NO_OFFSET:
        raise InvalidMessage(
            f"AppendBlock: negative field (first={first} last={last} expected={expected})"
        )
    if not 1 <= count <= BLOCK_EVENTS_MAX:
        raise InvalidMessage(f"AppendBlock: event_count={count} not in 1..{BLOCK_EVENTS_MAX}")
    segment = _name(view, HEADER_BYTES + APPEND_BLOCK.size, name_bytes, "AppendBlock")
    payload = frames[1]
    size = _nbytes(payload)
    if size != payload_bytes:
        raise InvalidMessage(
            f"AppendBlock: payload frame has {size} bytes, header says {payload_bytes}"
        )
    if size < 4 * count:
        raise InvalidMessage(f"AppendBlock: payload_bytes={size} < 4 * event_count={count}")
    return m.AppendBlock(writer_id, first, last, count, expected, segment, payload)


def _decode_data_appended(view: memoryview, frames: Sequence[Any]) -> m.DataAppended:
    _frame_count(frames, 1, "DataAppended")
    writer_id, last, length, dup, name_bytes = _fields(view, DATA_APPENDED, "DataAppended")
    if last < m.NO_EVENT_NUMBER or length < 0 or dup > 1:
        raise InvalidMessage(f"DataAppended: last={last} length={length} duplicate={dup}")
    segment = _name(view, HEADER_BYTES + DATA_APPENDED.size, name_bytes, "DataAppended")
    return m.DataAppended(writer_id, last, length, bool(dup), segment)


def _decode_read_segment(view: memoryview, frames: Sequence[Any]) -> m.ReadSegment:
    _frame_count(frames, 1, "ReadSegment")
    offset, max_bytes, wait_ms, name_bytes = _fields(view, READ_SEGMENT, "ReadSegment")
    if offset < 0:
        raise InvalidMessage(f"ReadSegment: offset={offset} < 0")
    if not 0 < max_bytes <= READ_BYTES_MAX:
        raise InvalidMessage(f"ReadSegment: max_bytes={max_bytes} not in 1..{READ_BYTES_MAX}")
    if wait_ms > TAIL_WAIT_MS_MAX:
        raise InvalidMessage(f"ReadSegment: wait_ms={wait_ms} > {TAIL_WAIT_MS_MAX}")
    segment = _name(view, HEADER_BYTES + READ_SEGMENT.size, name_bytes, "ReadSegment")
    return m.ReadSegment(offset, max_bytes, wait_ms, segment)


def _decode_segment_read(view: memoryview, frames: Sequence[Any]) -> m.SegmentRead:
    offset, length, flags, payload_bytes, name_bytes = _fields(view, SEGMENT_READ, "SegmentRead")
    if offset < 0 or length < 0 or flags > 1:
        raise InvalidMessage(f"SegmentRead: offset={offset} length={length} flags={flags}")
    segment = _name(view, HEADER_BYTES + SEGMENT_READ.size, name_bytes, "SegmentRead")
    payload = list(frames[1:])
    sizes = [_nbytes(p) for p in payload]
    if 0 in sizes:
        raise InvalidMessage("SegmentRead: empty payload frame")
    total = sum(sizes)
    if total != payload_bytes:
        raise InvalidMessage(
            f"SegmentRead: payload frames hold {total} bytes, header says {payload_bytes}"
        )
    if total > READ_BYTES_MAX or offset + total > length:
        raise InvalidMessage(f"SegmentRead: payload_bytes={total} offset={offset} length={length}")
    return m.SegmentRead(offset, length, bool(flags), segment, payload)


def _decode_segment_read_zstd(view: memoryview, frames: Sequence[Any]) -> m.SegmentRead:
    """Checked, then decompressed into one buffer: the `SegmentRead` the reply stands for."""
    offset, length, flags, raw, skip, stored, name_bytes = _fields(
        view, SEGMENT_READ_ZSTD, "SegmentReadZstd"
    )
    if offset < 0 or length < 0 or flags > 1 or not 0 < raw <= READ_BYTES_MAX:
        raise InvalidMessage(
            f"SegmentReadZstd: offset={offset} length={length} flags={flags} raw_bytes={raw}"
        )
    if offset + raw > length or skip >= ZSTD_FRAME_RAW_MAX:
        raise InvalidMessage(f"SegmentReadZstd: raw_bytes={raw} skip={skip} offset={offset}")
    segment = _name(view, HEADER_BYTES + SEGMENT_READ_ZSTD.size, name_bytes, "SegmentReadZstd")
    packed = [_view(f) for f in frames[1:]]
    if not packed or sum(len(f) for f in packed) != stored or stored > READ_BYTES_MAX:
        raise InvalidMessage(f"SegmentReadZstd: {len(packed)} frames, header says {stored} bytes")
    data = _decompress(packed, skip + raw)
    return m.SegmentRead(offset, length, bool(flags), segment, [data[skip : skip + raw]])


def _decompress(packed: list[memoryview], need: int) -> memoryview:
    """zstd frames into one buffer; each must state its size (at most ZSTD_FRAME_RAW_MAX),
    together at least `need` and less than one frame more, and each decode to that size."""
    import zstandard  # here: processes that never read such replies skip its import

    try:
        sizes = [zstandard.frame_content_size(f) for f in packed]
    except zstandard.ZstdError as exc:
        raise InvalidMessage(f"SegmentReadZstd: not a zstd frame: {exc}") from exc
    if any(not 0 < size <= ZSTD_FRAME_RAW_MAX for size in sizes):
        raise InvalidMessage(f"SegmentReadZstd: frame sizes {sizes} not in 1..{ZSTD_FRAME_RAW_MAX}")
    total = sum(sizes)
    if not need <= total < need + sizes[-1]:
        raise InvalidMessage(f"SegmentReadZstd: frames hold {total} bytes for {need}")
    out = memoryview(bytearray(total))
    decompressor = zstandard.ZstdDecompressor()
    pos = 0
    for frame, size in zip(packed, sizes, strict=True):
        try:
            exact = decode_frame_into(decompressor, frame, out[pos : pos + size])
        except zstandard.ZstdError as exc:
            raise InvalidMessage(f"SegmentReadZstd: corrupt frame: {exc}") from exc
        if not exact:
            raise InvalidMessage(f"SegmentReadZstd: a frame of {size} bytes decoded short or long")
        pos += size
    return out


def _exact(view: memoryview, layout: struct.Struct, what: str) -> tuple:
    if len(view) != HEADER_BYTES + layout.size:
        raise InvalidMessage(f"{what}: {len(view)} bytes, expected {HEADER_BYTES + layout.size}")
    return layout.unpack_from(view, HEADER_BYTES)


def _payload(frames: Sequence[Any], size: int, limit: int, what: str) -> memoryview:
    _frame_count(frames, 2, what)
    if size > limit:
        raise InvalidMessage(f"{what}: payload_bytes={size} > {limit}")
    payload = _view(frames[1])
    if payload.nbytes != size:
        raise InvalidMessage(f"{what}: payload frame {payload.nbytes} bytes, header says {size}")
    return payload


def _ids(what: str, *values: int) -> None:
    if any(v > I64_MAX for v in values):
        raise InvalidMessage(f"{what}: ledger/entry/epoch out of range {values}")


def _decode_add_entry(view: memoryview, frames: Sequence[Any]) -> m.AddEntry:
    ledger, entry, epoch, lac, crc, size = _exact(view, ADD_ENTRY, "AddEntry")
    _ids("AddEntry", ledger, entry, epoch)
    if lac < -1 or lac >= entry:
        raise InvalidMessage(f"AddEntry: lac={lac} not in -1..{entry - 1}")
    payload = _payload(frames, size, ENTRY_BYTES_MAX, "AddEntry")
    return m.AddEntry(ledger, entry, epoch, lac, crc, payload)


def _decode_entry_added(view: memoryview, frames: Sequence[Any]) -> m.EntryAdded:
    _frame_count(frames, 1, "EntryAdded")
    return m.EntryAdded(*_exact(view, ENTRY_ADDED, "EntryAdded"))


def _decode_read_entry(view: memoryview, frames: Sequence[Any]) -> m.ReadEntry:
    _frame_count(frames, 1, "ReadEntry")
    ledger, entry, epoch, fence = _exact(view, READ_ENTRY, "ReadEntry")
    _ids("ReadEntry", ledger, epoch)
    if entry < m.NO_ENTRY or fence > 1:
        raise InvalidMessage(f"ReadEntry: entry={entry} fence={fence}")
    return m.ReadEntry(ledger, entry, epoch, bool(fence))


def _decode_entry_read(view: memoryview, frames: Sequence[Any]) -> m.EntryRead:
    ledger, entry, last, lac, fenced, found, size = _exact(view, ENTRY_READ, "EntryRead")
    if fenced > 1 or found > 1 or (size and not found):
        raise InvalidMessage(f"EntryRead: fenced={fenced} found={found} payload_bytes={size}")
    payload = _payload(frames, size, ENTRY_BYTES_MAX, "EntryRead")
    return m.EntryRead(ledger, entry, last, lac, bool(fenced), bool(found), payload)


def _decode_error(view: memoryview, frames: Sequence[Any]) -> m.ErrorReply:
    _frame_count(frames, 1, "Error")
    (code,) = _fields(view, ERROR, "Error")
    body = _msgpack(view, HEADER_BYTES + ERROR.size, _error_body_decoder, "Error")
    message, fields = body.get("message"), body.get("fields", {})
    if not isinstance(message, str) or not isinstance(fields, dict):
        raise InvalidMessage("Error: body must hold a message string and a fields map")
    return m.ErrorReply(code, message, fields)


def _msgpack(view: memoryview, start: int, decoder: msgspec.msgpack.Decoder, what: str) -> Any:
    if len(view) - start > CONTROL_BYTES_MAX:
        raise InvalidMessage(f"{what}: body {len(view) - start} bytes > {CONTROL_BYTES_MAX}")
    try:
        return decoder.decode(view[start:])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidMessage(f"{what}: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidMessage(f"{what}: {type(exc).__name__}: {exc}") from None


def _decode_control(view: memoryview, frames: Sequence[Any]) -> m.Control:
    _frame_count(frames, 1, "Control")
    return _msgpack(view, HEADER_BYTES, _control_decoder, "Control")


def _decode_hello(view: memoryview, frames: Sequence[Any]) -> m.Hello:
    _frame_count(frames, 1, "Hello")
    return _msgpack(view, HEADER_BYTES, _hello_decoder, "Hello")


def _decode_hello_reply(view: memoryview, frames: Sequence[Any]) -> m.HelloReply:
    _frame_count(frames, 1, "HelloReply")
    return _msgpack(view, HEADER_BYTES, _hello_reply_decoder, "HelloReply")


_DECODERS = {
    m.MsgType.HELLO: _decode_hello,
    m.MsgType.HELLO_REPLY: _decode_hello_reply,
    m.MsgType.ERROR: _decode_error,
    m.MsgType.CONTROL: _decode_control,
    m.MsgType.CONTROL_REPLY: _decode_control,
    m.MsgType.SETUP_APPEND: _decode_setup_append,
    m.MsgType.APPEND_SETUP: _decode_append_setup,
    m.MsgType.APPEND_BLOCK: decode_append_block,
    m.MsgType.DATA_APPENDED: _decode_data_appended,
    m.MsgType.READ_SEGMENT: _decode_read_segment,
    m.MsgType.SEGMENT_READ: _decode_segment_read,
    m.MsgType.SEGMENT_READ_ZSTD: _decode_segment_read_zstd,
    m.MsgType.ADD_ENTRY: _decode_add_entry,
    m.MsgType.ENTRY_ADDED: _decode_entry_added,
    m.MsgType.READ_ENTRY: _decode_read_entry,
    m.MsgType.ENTRY_READ: _decode_entry_read,
}
