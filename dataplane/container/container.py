"""The segment container: a sans-I/O state machine (operations in, effects out).

A container owns the segments whose names hash to it. The worker feeds it decoded requests
and durable-log completions; it answers with effects: reply frames for a peer, or read
plans (log pieces to read and send). It never touches a socket or a file itself.

Append path: `append` validates a block (segment exists and is not sealed, the writer did
`SetupAppend`, event numbers move forward, optional expected offset), assigns its segment
offset and queues it; `build_frame` packs everything queued into one log record (blocks of
one writer to one segment are merged), copying each payload once; `committed` applies the
record once the log has made it durable: lengths, writer attributes, read index, acks,
waiting tail reads. Nothing is acknowledged before `committed`.

Invariants: committed offsets are contiguous per segment; a segment's `length` only grows;
a writer's last event number only grows; acks are sent in log order.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, NamedTuple

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    ConditionalCheckFailed,
    DataCorruption,
    EventTooLarge,
    InvalidArgument,
    InvalidEventNumber,
    InvalidMessage,
    NoSuchSegment,
    SegmentSealed,
    SegmentTruncated,
    StreamVaultError,
)
from streamvault.client.protocol.limits import BLOCK_BYTES_MAX
from streamvault.dataplane.cache.segment_cache import SegmentCache
from streamvault.dataplane.container import checkpoint
from streamvault.dataplane.container import operations as ops
from streamvault.dataplane.container.segment import Chunk, Piece, Segment
from streamvault.dataplane.container.tiering import (
    TieringConfig,
    UploadTask,
    due_uploads,
    truncation_ledger,
)
from streamvault.dataplane.log.framing import RECORD_HEADER_BYTES

log = logging.getLogger(__name__)

Peer = bytes
Effect = tuple[Peer, list[Any]]

IDLE_S = 5.0
"""A container with no record for this long is idle: its segments' bytes not yet in LTS are
uploaded at once (not `flush_wait_s` after they came), and once every byte is in LTS it
checkpoints into a new ledger (`idle_checkpoint_due`), so its log drops the ledgers holding
that data."""
MERGE_BYTES_MAX = 512 * 1024
"""Blocks of one writer to one segment are merged into one APPEND up to this size."""
WAITERS_MAX = 10_000
"""Tail reads parked per container; more are answered at once with no data."""
SESSIONS_PER_PEER_MAX = 65_536


class LtsRead(NamedTuple):
    """Bytes [offset, offset + length) of LTS chunk `chunk` (of `stored_bytes`)."""

    chunk: str
    stored_bytes: int
    offset: int
    length: int


class ReadPlan(NamedTuple):
    """Where the bytes of one read reply come from: cache views, log pieces, or LTS."""

    peer: Peer
    request_id: int
    segment: bytes
    offset: int
    segment_length: int
    sealed: bool
    pieces: list[Piece]
    views: list[Any] = []
    blocks: list[int] = []  # cache blocks the views are in (lent while they are sent)
    lts: LtsRead | None = None
    zstd: bool = False  # LTS bytes may go as stored zstd frames (the reader asked for them)

    @property
    def end_of_segment(self) -> bool:
        size = sum(p.length for p in self.pieces) + sum(len(v) for v in self.views)
        return self.sealed and self.lts is None and self.offset + size >= self.segment_length


class _Waiter(NamedTuple):
    peer: Peer
    request_id: int
    offset: int
    max_bytes: int
    deadline: float


class _Append:
    __slots__ = (
        "seg",
        "writer",
        "first",
        "last",
        "count",
        "offset",
        "length",
        "payloads",
        "acks",
        "data_pos",
    )

    def __init__(
        self,
        seg: Segment,
        writer: bytes,
        first: int,
        last: int,
        count: int,
        offset: int,
        payload: Any,
        length: int,
        peer: Peer,
        rid: int,
    ) -> None:
        self.seg, self.writer, self.first, self.last, self.count = seg, writer, first, last, count
        self.offset, self.length, self.payloads = offset, length, [payload]
        self.acks = {peer: rid}
        self.data_pos = 0

    def size(self) -> int:
        return ops.APPEND_OVERHEAD + self.length


class _Admin:
    __slots__ = ("kind", "seg", "peer", "rid")

    def __init__(self, kind: int, seg: Segment, peer: Peer, rid: int) -> None:
        self.kind, self.seg, self.peer, self.rid = kind, seg, peer, rid

    def size(self) -> int:
        if self.kind == ops.OP_CREATE:
            return ops.CREATE_BYTES + len(self.seg.name)
        return ops.SEAL_BYTES if self.kind == ops.OP_SEAL else ops.DELETE_BYTES


class _TruncateOp:
    __slots__ = ("seg", "offset", "peer", "rid")

    def __init__(self, seg: Segment, offset: int, peer: Peer, rid: int) -> None:
        self.seg, self.offset, self.peer, self.rid = seg, offset, peer, rid

    def size(self) -> int:
        return ops.TRUNCATE_BYTES


class _Note:
    """A reply that must wait for earlier operations to become durable (not logged)."""

    __slots__ = ("peer", "frames")

    def __init__(self, peer: Peer, frames: list[Any]) -> None:
        self.peer, self.frames = peer, frames

    def size(self) -> int:
        return 0


class _ChunkOp:
    """Record that bytes [start, end) of a segment are in LTS as chunk `name`."""

    __slots__ = ("seg", "start", "end", "name", "stored_bytes")

    def __init__(self, seg: Segment, start: int, end: int, name: str, stored_bytes: int) -> None:
        self.seg, self.start, self.end = seg, start, end
        self.name, self.stored_bytes = name, stored_bytes

    def size(self) -> int:
        return ops.CHUNK_BYTES + len(self.name.encode())


class _CheckpointOp:
    """The container's committed metadata as of record `covered` (checkpoint.py)."""

    __slots__ = ("covered", "snapshot", "idle")

    def __init__(self, covered: tuple[int, int], snapshot: bytes, idle: bool = False) -> None:
        self.covered, self.snapshot, self.idle = covered, snapshot, idle

    def size(self) -> int:
        return ops.CHECKPOINT_BYTES + len(self.snapshot)


def error_frames(rid: int, exc: StreamVaultError) -> list[Any]:
    return codec.encode_exception(rid, exc)


class Container:
    def __init__(
        self,
        container_id: int,
        *,
        frame_payload_bytes: int = 1024 * 1024,
        cache: SegmentCache | None = None,
        tiering: TieringConfig | None = None,
        checkpoint_records: int = 300,
        checkpoint_bytes: int = 256 * 1024 * 1024,
        idle_s: float = IDLE_S,
    ) -> None:
        self.container_id = container_id
        self.frame_payload_bytes = frame_payload_bytes
        self.cache = cache
        self.tiering = tiering or TieringConfig()
        self.epoch = 0  # the log's epoch, set after recovery; embedded in chunk names
        self.garbage: list[str] = []  # LTS chunks of deleted segments, to delete
        self.checkpoint_records = checkpoint_records
        self.checkpoint_bytes = checkpoint_bytes
        self.last_committed = (0, -1)  # (ledger, entry) of the last applied record
        self.records_since_checkpoint = 0
        self.bytes_since_checkpoint = 0
        self.checkpoint_pending = False
        self.truncate_before: int | None = None  # ledgers below this may be deleted
        self.idle_s = idle_s
        self.last_record_at: float | None = None  # `now` of the last committed record
        self.idle_checkpointed = False  # the last record was an idle checkpoint alone
        self.segments: dict[bytes, Segment] = {}
        self.by_id: dict[int, Segment] = {}
        self.next_segment_id = 1
        self.queue: list[_Append | _Admin | _Note | _ChunkOp | _CheckpointOp | _TruncateOp] = []
        self.queued_bytes = 0  # appended bytes accepted and not yet durable (queued or in flight)
        self._last_op: dict[int, _Append | _Admin] = {}
        self.in_flight: deque[list[Any]] = deque()
        self.sessions: dict[Peer, set[tuple[bytes, int]]] = {}
        self.waiting: set[Segment] = set()
        self.waiter_count = 0
        self.counters = {
            "flush_queue_empty": 0,
            "idle_checkpoints": 0,
            "flush_bytes_max": 0,
            "records": 0,
            "appends": 0,
            "append_bytes": 0,
            "duplicates": 0,
            "cache_reads": 0,  # read replies served from the shared cache
            "log_reads": 0,  # ... from the durable log (not in the cache, not yet in LTS)
        }

    # --- requests --------------------------------------------------------------------
    def _segment(self, name: bytes) -> Segment:
        seg = self.segments.get(name)
        if seg is None or seg.deleting:
            raise NoSuchSegment(
                f"segment {name.decode(errors='replace')} does not exist", segment=name
            )
        return seg

    def setup_append(self, peer: Peer, rid: int, req: m.SetupAppend) -> list[Any]:
        seg = self._segment(req.segment)
        if seg.pending_sealed:
            raise SegmentSealed(
                f"setup append: segment {req.segment.decode()} is sealed", segment=req.segment
            )
        sessions = self.sessions.setdefault(peer, set())
        if (
            len(sessions) >= SESSIONS_PER_PEER_MAX
            and (req.writer_id, seg.segment_id) not in sessions
        ):
            raise InvalidArgument(
                f"setup append: more than {SESSIONS_PER_PEER_MAX} sessions on one connection",
                field="writer_id",
            )
        sessions.add((req.writer_id, seg.segment_id))
        reply = m.AppendSetup(
            req.writer_id, seg.last_event(req.writer_id), seg.length, seg.sealed, req.segment
        )
        return codec.encode(reply, rid)

    def append(self, peer: Peer, rid: int, req: m.AppendBlock, size: int) -> list[Any] | None:
        """Queue a block; return reply frames if it is answered at once, else None."""
        seg = self._segment(req.segment)
        writer = req.writer_id
        if (writer, seg.segment_id) not in self.sessions.get(peer, ()):
            raise InvalidMessage(
                f"append to {req.segment.decode()} without SetupAppend", segment=req.segment
            )
        if seg.pending_sealed:
            raise SegmentSealed(
                f"append: segment {req.segment.decode()} is sealed", segment=req.segment
            )
        if size > BLOCK_BYTES_MAX:
            raise EventTooLarge(
                f"append: block_bytes={size} > block_bytes_max={BLOCK_BYTES_MAX}", block_bytes=size
            )
        first, last = req.first_event_number, req.last_event_number
        if last < first or last - first + 1 < req.event_count:
            raise InvalidEventNumber(
                f"append: event numbers {first}..{last} cannot hold {req.event_count} events "
                f"in increasing order",
                first=first,
                last=last,
                count=req.event_count,
            )
        committed_last = seg.last_event(writer)
        if last <= committed_last:
            self.counters["duplicates"] += 1
            return codec.encode(
                m.DataAppended(writer, committed_last, seg.length, True, req.segment), rid
            )
        pending_last = seg.pending_last_event(writer)
        if last <= pending_last:  # a resend of a block not yet durable: ack after it is
            self.counters["duplicates"] += 1
            self._note(peer, codec.encode(m.DataAppended(writer, last, 0, True, req.segment), rid))
            return None
        if first <= pending_last:
            raise InvalidEventNumber(
                f"append: block {first}..{last} overlaps the stored event number {pending_last}",
                first=first,
                last=last,
                stored=pending_last,
            )
        if req.expected_offset != m.NO_OFFSET and req.expected_offset != seg.pending_length:
            raise ConditionalCheckFailed(
                f"append: expected_offset={req.expected_offset} != length={seg.pending_length}",
                current_offset=seg.pending_length,
                segment=req.segment,
            )
        offset = seg.pending_length
        seg.pending_length = offset + size
        seg.pending_writers[writer] = last
        op = self._last_op.get(seg.segment_id)
        if isinstance(op, _Append) and op.writer == writer and op.length + size <= MERGE_BYTES_MAX:
            op.last = last
            op.count += req.event_count
            op.length += size
            op.payloads.append(req.payload)
            op.acks[peer] = rid
        else:
            op = _Append(
                seg, writer, first, last, req.event_count, offset, req.payload, size, peer, rid
            )
            self.queue.append(op)
            self._last_op[seg.segment_id] = op
        self.queued_bytes += size
        return None

    def _note(self, peer: Peer, frames: list[Any]) -> None:
        if self.queue:
            self.queue.append(_Note(peer, frames))
        else:
            assert self.in_flight, "pending state without queued or in-flight operations"
            self.in_flight[-1].append(_Note(peer, frames))

    def create_segment(self, peer: Peer, rid: int, name: bytes) -> list[Any] | None:
        seg = self.segments.get(name)
        if seg is not None and not seg.deleting:
            if seg.created:
                return codec.encode_reply(m.Done(changed=False), rid)
            self._note(peer, codec.encode_reply(m.Done(changed=False), rid))
            return None
        seg = Segment(self.next_segment_id, name)
        self.next_segment_id += 1
        self.segments[name] = seg
        self.by_id[seg.segment_id] = seg
        self._queue_admin(_Admin(ops.OP_CREATE, seg, peer, rid))
        return None

    def seal_segment(self, peer: Peer, rid: int, name: bytes) -> list[Any] | None:
        seg = self._segment(name)
        if seg.pending_sealed:
            info = m.SegmentInfo(name.decode(), seg.pending_length, seg.start_offset, True)
            if seg.sealed:
                return codec.encode_reply(info, rid)
            self._note(peer, codec.encode_reply(info, rid))
            return None
        seg.pending_sealed = True
        self._queue_admin(_Admin(ops.OP_SEAL, seg, peer, rid))
        return None

    def truncate_segment(self, peer: Peer, rid: int, name: bytes, offset: int) -> list[Any] | None:
        """Drop the bytes below `offset` (idempotent; never beyond the segment's length)."""
        seg = self._segment(name)
        if not 0 <= offset <= seg.pending_length:
            raise InvalidArgument(
                f"truncate {name.decode()}: offset {offset} not in 0..{seg.pending_length}",
                field="offset",
            )
        self.queue.append(_TruncateOp(seg, offset, peer, rid))
        return None

    def delete_segment(self, peer: Peer, rid: int, name: bytes) -> list[Any] | None:
        seg = self.segments.get(name)
        if seg is None or seg.deleting:
            return codec.encode_reply(m.Done(changed=False), rid)
        seg.deleting = True
        self._queue_admin(_Admin(ops.OP_DELETE, seg, peer, rid))
        return None

    def _queue_admin(self, op: _Admin) -> None:
        self.queue.append(op)
        self._last_op[op.seg.segment_id] = op

    def segment_info(self, rid: int, name: bytes) -> list[Any]:
        seg = self._segment(name)
        info = m.SegmentInfo(name.decode(), seg.length, seg.start_offset, seg.sealed)
        return codec.encode_reply(info, rid)

    def read(self, peer: Peer, rid: int, req: m.ReadSegment, now: float) -> ReadPlan | None:
        seg = self._segment(req.segment)
        if req.offset < seg.start_offset:
            raise SegmentTruncated(
                f"read {req.segment.decode()}: offset {req.offset} < start {seg.start_offset}",
                start_offset=seg.start_offset,
            )
        if req.offset > seg.pending_length:
            raise InvalidArgument(
                f"read {req.segment.decode()}: offset {req.offset} > length {seg.pending_length}",
                field="offset",
            )
        if req.offset < seg.length or seg.sealed or req.wait_ms == 0:
            return self._plan(seg, peer, rid, req.offset, req.max_bytes)
        if self.waiter_count >= WAITERS_MAX:
            return self._plan(seg, peer, rid, req.offset, req.max_bytes)
        seg.waiters.append(_Waiter(peer, rid, req.offset, req.max_bytes, now + req.wait_ms / 1e3))
        self.waiting.add(seg)
        self.waiter_count += 1
        return None

    def _plan(self, seg: Segment, peer: Peer, rid: int, offset: int, max_bytes: int) -> ReadPlan:
        """Serve from the cache if it holds `offset`; else from the log if the bytes are not
        in LTS yet; else from the LTS chunk holding them."""
        plan = ReadPlan(peer, rid, seg.name, offset, seg.length, seg.sealed, [])
        if offset >= seg.length:
            return plan
        hits = self.cache.read(self._cache_key(seg), offset, max_bytes) if self.cache else []
        if hits:
            self.counters["cache_reads"] += 1
            return plan._replace(views=[v for v, _ in hits], blocks=[b for _, b in hits])
        if offset >= seg.storage_length:
            self.counters["log_reads"] += 1
            return plan._replace(pieces=seg.plan(offset, max_bytes))
        chunk = seg.chunk_for(offset)
        assert chunk is not None, f"bytes below storage_length {seg.storage_length} not in LTS"
        length = min(chunk.end - offset, max_bytes)
        return plan._replace(
            lts=LtsRead(chunk.name, chunk.stored_bytes, offset - chunk.start, length)
        )

    def expire_reads(self, now: float) -> list[ReadPlan]:
        plans: list[ReadPlan] = []
        for seg in list(self.waiting):
            keep = []
            for w in seg.waiters:
                if w.deadline <= now:
                    plans.append(
                        ReadPlan(w.peer, w.request_id, seg.name, w.offset, seg.length, False, [])
                    )
                else:
                    keep.append(w)
            self.waiter_count -= len(seg.waiters) - len(keep)
            seg.waiters = keep
            if not keep:
                self.waiting.discard(seg)
        return plans

    def peer_gone(self, peer: Peer) -> None:
        self.sessions.pop(peer, None)
        for seg in list(self.waiting):
            before = len(seg.waiters)
            seg.waiters = [w for w in seg.waiters if w.peer != peer]
            self.waiter_count -= before - len(seg.waiters)
            if not seg.waiters:
                self.waiting.discard(seg)

    # --- group commit ----------------------------------------------------------------
    def build_frame(self, buffer_for: Any) -> tuple[Any, int, list[Any]] | None:
        """Pack queued operations into one record.

        `buffer_for(payload_bytes)` returns a WriteBuffer or None (log at its in-flight
        limit). Returns (buffer, payload_bytes, token) to submit, or None.
        """
        queue = self.queue
        if not queue:
            return None
        buffer = buffer_for(max(queue[0].size(), self.frame_payload_bytes))
        if buffer is None:
            return None
        out = buffer.payload
        capacity = len(out)
        pos = 0
        taken = 0
        for op in queue:
            size = op.size()
            if pos + size > capacity:
                break
            pos = self._put(out, pos, op)
            taken += 1
        token = queue[:taken]
        if taken == len(queue):
            self.queue = []
            self.counters["flush_queue_empty"] += 1
        else:
            self.queue = queue[taken:]
            self.counters["flush_bytes_max"] += 1
        self._last_op = {}
        self.in_flight.append(token)
        self.counters["records"] += 1
        return buffer, pos, token

    @staticmethod
    def _put(out: memoryview, pos: int, op: _Append | _Admin | _Note) -> int:
        if isinstance(op, _Append):
            pos = ops.put_append_head(
                out,
                pos,
                segment_id=op.seg.segment_id,
                writer_id=op.writer,
                first_event=op.first,
                last_event=op.last,
                event_count=op.count,
                offset=op.offset,
                data_bytes=op.length,
            )
            op.data_pos = pos
            for payload in op.payloads:
                view = codec._view(payload)
                end = pos + len(view)
                out[pos:end] = view
                pos = end
            op.payloads = []  # release the received frames
            return pos
        if isinstance(op, _TruncateOp):
            return ops.put_truncate(out, pos, op.seg.segment_id, op.offset)
        if isinstance(op, _CheckpointOp):
            return ops.put_checkpoint(out, pos, covered=op.covered, snapshot=op.snapshot)
        if isinstance(op, _ChunkOp):
            return ops.put_chunk(
                out,
                pos,
                op.seg.segment_id,
                start=op.start,
                end=op.end,
                stored_bytes=op.stored_bytes,
                name=op.name.encode(),
            )
        if isinstance(op, _Admin):
            if op.kind == ops.OP_CREATE:
                return ops.put_create(out, pos, op.seg.segment_id, op.seg.name)
            if op.kind == ops.OP_SEAL:
                return ops.put_seal(out, pos, op.seg.segment_id, op.seg.pending_length)
            return ops.put_delete(out, pos, op.seg.segment_id)
        return pos

    def committed(
        self,
        token: list[Any],
        ledger_id: int,
        record_pos: int,
        payload: Any = None,
        now: float = 0.0,
        entry_id: int = -1,
    ) -> tuple[list[Effect], list[ReadPlan]]:
        """Apply a durable record (the oldest in flight) and return what to send.

        `payload` is the record's payload (its appended bytes are copied into the cache)."""
        assert self.in_flight and self.in_flight[0] is token, "records complete in order"
        self.in_flight.popleft()
        previous, self.last_committed = self.last_committed, (ledger_id, entry_id)
        self.last_record_at = now
        self.idle_checkpointed = all(isinstance(op, _CheckpointOp) and op.idle for op in token)
        self.queued_bytes -= sum(op.length for op in token if isinstance(op, _Append))
        self.records_since_checkpoint += 1
        self.bytes_since_checkpoint += len(payload) if payload is not None else 0
        base = record_pos + RECORD_HEADER_BYTES
        effects: list[Effect] = []
        touched: list[Segment] = []
        for op in token:
            if isinstance(op, _Append):
                seg = op.seg
                self._apply_append(
                    seg, op.writer, op.last, op.offset, op.length, ledger_id, base + op.data_pos
                )
                if seg.length - op.length == seg.storage_length:
                    seg.dirty_since = now
                if self.cache is not None and payload is not None:
                    self.cache.append(
                        self._cache_key(seg),
                        op.offset,
                        payload[op.data_pos : op.data_pos + op.length],
                    )
                if seg.pending_writers.get(op.writer) == op.last:
                    del seg.pending_writers[op.writer]
                ack = m.DataAppended(op.writer, op.last, op.offset + op.length, False, seg.name)
                for peer, rid in op.acks.items():
                    effects.append((peer, codec.encode(ack, rid)))
                if seg.waiters:
                    touched.append(seg)
            elif isinstance(op, _Admin):
                effects.append((op.peer, self._apply_admin(op.kind, op.seg, op.rid)))
                if op.seg.waiters:
                    touched.append(op.seg)
            elif isinstance(op, _ChunkOp):
                self._apply_chunk(op.seg, op.start, op.end, op.name, op.stored_bytes, now)
            elif isinstance(op, _TruncateOp):
                self._apply_truncate(op.seg, op.offset)
                info = m.SegmentInfo(
                    op.seg.name.decode(), op.seg.length, op.seg.start_offset, op.seg.sealed
                )
                effects.append((op.peer, codec.encode_reply(info, op.rid)))
            elif isinstance(op, _CheckpointOp):
                self.checkpoint_pending = False
                upto = op.covered[0]
                if previous == op.covered:  # no record between: all older ledgers are covered
                    upto = ledger_id
                self.truncate_before = truncation_ledger(list(self.by_id.values()), upto)
            else:
                effects.append((op.peer, op.frames))
        return effects, self._wake(touched)

    def idle_checkpoint_due(self, now: float) -> bool:
        """True if this container is idle (`_quiet`), every byte of its segments is in LTS,
        and its last record was not such a checkpoint already. Its log then holds nothing
        recovery needs but metadata: the worker rolls the log over and queues
        `checkpoint_idle`, whose record, the first after the covered one and in a new
        ledger, lets every older ledger go (`committed`). Without it an idle container's
        open ledger pinned its data in the log, and in a shared bookie journal every file
        written after it, until compaction copied it forward (again and again)."""
        if self.idle_checkpointed or self.checkpoint_pending or not self._quiet(now):
            return False
        return all(seg.first_ledger() is None for seg in self.by_id.values())

    def _quiet(self, now: float) -> bool:
        """No record for `idle_s` (none since this container started counts as long ago),
        nothing queued or in flight."""
        if self.queue or self.in_flight:
            return False
        return self.last_record_at is None or now - self.last_record_at >= self.idle_s

    def checkpoint_idle(self) -> None:
        """Queue the idle checkpoint (see `idle_checkpoint_due`)."""
        snapshot = checkpoint.take(list(self.by_id.values()), self.next_segment_id)
        self.queue.append(_CheckpointOp(self.last_committed, snapshot, idle=True))
        self.checkpoint_pending = True
        self.records_since_checkpoint = self.bytes_since_checkpoint = 0
        self.counters["idle_checkpoints"] += 1

    def maybe_checkpoint(self) -> bool:
        """Queue a checkpoint when enough records or bytes were written since the last."""
        if self.checkpoint_pending or (
            self.records_since_checkpoint < self.checkpoint_records
            and self.bytes_since_checkpoint < self.checkpoint_bytes
        ):
            return False
        snapshot = checkpoint.take(list(self.by_id.values()), self.next_segment_id)
        self.queue.append(_CheckpointOp(self.last_committed, snapshot))
        self.checkpoint_pending = True
        self.records_since_checkpoint = self.bytes_since_checkpoint = 0
        return True

    def load_checkpoint(self, snapshot: bytes) -> None:
        """Start recovery from a checkpoint (then replay the records after it)."""
        self.next_segment_id, segments = checkpoint.load(snapshot)
        self.segments = {s.name: s for s in segments}
        self.by_id = {s.segment_id: s for s in segments}

    def _cache_key(self, seg: Segment) -> int:
        """A worker's containers share one cache; segment ids are unique per container."""
        return (self.container_id << 48) | seg.segment_id

    # --- tiering to LTS ----------------------------------------------------------------
    def uploads_due(self, now: float) -> list[UploadTask]:
        """Uploads to start now (each segment is marked as uploading)."""
        return due_uploads(
            list(self.by_id.values()),
            now=now,
            config=self.tiering,
            cache=self.cache,
            cache_key=self._cache_key,
            container_id=self.container_id,
            epoch=self.epoch,
            idle=self._quiet(now),
        )

    def uploaded(self, segment_id: int, start: int, end: int, name: str, stored_bytes: int) -> None:
        """The uploader stored [start, end) of a segment as chunk `name`: log that fact."""
        seg = self.by_id.get(segment_id)
        if seg is None or seg.deleting:
            return  # deleted meanwhile: the chunk is an orphan, collected later
        if seg.storage_length != start:
            seg.uploading = 0  # truncated past it, or a late duplicate: upload anew
            return
        self.queue.append(_ChunkOp(seg, start, end, name, stored_bytes))

    def upload_failed(self, segment_id: int, end: int) -> None:
        """The upload of [storage_length, end) failed or may have: it is retried for the
        same range, so a chunk it may have stored is the one the retry names."""
        seg = self.by_id.get(segment_id)
        if seg is not None:
            seg.uploading = 0
            seg.retry_end = end

    def _apply_chunk(
        self, seg: Segment, start: int, end: int, name: str, stored_bytes: int, now: float
    ) -> None:
        if start != seg.storage_length or end > seg.length:
            return  # already applied (replay of a duplicate)
        seg.chunks.append(Chunk(start, end, name, stored_bytes))
        seg.storage_length = end
        seg.retry_end = 0
        if seg.uploading <= end:
            seg.uploading = 0
        seg.dirty_since = now
        seg.index_trim(end)
        if self.cache is not None:
            self.cache.unpin_below(self._cache_key(seg), end)

    def _apply_append(
        self,
        seg: Segment,
        writer: bytes,
        last: int,
        offset: int,
        length: int,
        ledger_id: int,
        position: int,
    ) -> None:
        assert offset == seg.length, (offset, seg.length)
        seg.index_add(offset, ledger_id, position)
        seg.length = offset + length
        seg.writers[writer] = last
        self.counters["appends"] += 1
        self.counters["append_bytes"] += length

    def _apply_admin(self, kind: int, seg: Segment, rid: int) -> list[Any]:
        if kind == ops.OP_CREATE:
            seg.created = True
            return codec.encode_reply(m.Done(changed=True), rid)
        if kind == ops.OP_SEAL:
            seg.sealed = True
            info = m.SegmentInfo(seg.name.decode(), seg.length, seg.start_offset, True)
            return codec.encode_reply(info, rid)
        self._forget(seg)
        return codec.encode_reply(m.Done(changed=True), rid)

    def _apply_truncate(self, seg: Segment, offset: int) -> None:
        dropped = seg.truncate(offset)
        self.garbage.extend(chunk.name for chunk in dropped)
        if self.cache is not None:
            self.cache.drop_below(self._cache_key(seg), seg.start_offset)
            self.cache.unpin_below(self._cache_key(seg), seg.storage_length)

    def _forget(self, seg: Segment) -> None:
        if self.segments.get(seg.name) is seg:
            del self.segments[seg.name]
        self.by_id.pop(seg.segment_id, None)
        self.garbage.extend(chunk.name for chunk in seg.chunks)
        if self.cache is not None:
            self.cache.drop(self._cache_key(seg))

    def _wake(self, touched: list[Segment]) -> list[ReadPlan]:
        plans: list[ReadPlan] = []
        for seg in touched:
            waiters, seg.waiters = seg.waiters, []
            self.waiting.discard(seg)
            self.waiter_count -= len(waiters)
            for w in waiters:
                if seg.segment_id not in self.by_id:
                    continue  # deleted: the waiter's connection gets nothing; it times out
                plans.append(self._plan(seg, w.peer, w.request_id, w.offset, w.max_bytes))
        return plans

    # --- recovery --------------------------------------------------------------------
    def replay(self, payload: memoryview, ledger_id: int, record_pos: int) -> None:
        """Apply one recovered record (the log replays them in order)."""
        base = record_pos + RECORD_HEADER_BYTES
        for op in ops.iter_ops(payload):
            if op.kind == ops.OP_CHECKPOINT:
                continue  # the state it describes is the state replay has reached
            if op.kind == ops.OP_CREATE:
                seg = Segment(op.segment_id, op.name)
                seg.created = True
                self.segments[op.name] = seg
                self.by_id[op.segment_id] = seg
                self.next_segment_id = max(self.next_segment_id, op.segment_id + 1)
                continue
            seg = self.by_id.get(op.segment_id)
            if seg is None:
                raise DataCorruption(
                    f"container {self.container_id}: log names unknown segment id {op.segment_id}"
                )
            if op.kind == ops.OP_APPEND:
                self._apply_append(
                    seg,
                    op.writer_id,
                    op.last_event,
                    op.offset,
                    op.data_bytes,
                    ledger_id,
                    base + op.data_pos,
                )
                seg.pending_length = seg.length
                self._recache(seg, payload, op)
            elif op.kind == ops.OP_CHUNK:
                self._apply_chunk(seg, op.offset, op.data_pos, op.name.decode(), op.data_bytes, 0.0)
            elif op.kind == ops.OP_SEAL:
                seg.sealed = seg.pending_sealed = True
            elif op.kind == ops.OP_TRUNCATE:
                self._apply_truncate(seg, op.offset)
            elif op.kind == ops.OP_DELETE:
                self._forget(seg)

    def replay_data(self, payload: memoryview, ledger_id: int, record_pos: int) -> None:
        """Replay a record the loaded checkpoint already covers: only its bytes that are
        not in LTS yet matter (they go back into the read index and the cache)."""
        base = record_pos + RECORD_HEADER_BYTES
        for op in ops.iter_ops(payload):
            if op.kind != ops.OP_APPEND:
                continue
            seg = self.by_id.get(op.segment_id)
            end = op.offset + op.data_bytes
            if seg is None or end <= seg.storage_length or op.offset >= seg.length:
                continue  # deleted later, already in LTS, or (never) beyond the checkpoint
            seg.index_add(op.offset, ledger_id, base + op.data_pos)
            self._recache(seg, payload, op)

    def _recache(self, seg: Segment, payload: memoryview, op: ops.Op) -> None:
        if self.cache is None:
            return
        skip = max(0, seg.storage_length - op.offset)
        if skip < op.data_bytes:
            start = op.data_pos + skip
            self.cache.append(
                self._cache_key(seg), op.offset + skip, payload[start : op.data_pos + op.data_bytes]
            )

    def finish_recovery(self, *, epoch: int, now: float) -> None:
        """After the last replayed record: the new epoch, and the clock for pending uploads."""
        self.epoch = epoch
        for seg in self.by_id.values():
            if seg.length > seg.storage_length:
                seg.dirty_since = now
