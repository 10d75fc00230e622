"""Container checkpoints: the whole metadata of a container in one log operation.

A checkpoint holds every segment's metadata (name, length, start, sealed, bytes in LTS and
their chunks, each writer's last event number) as of a *covered* position: the last record
the container had applied when the snapshot was taken. Recovery loads the last checkpoint,
re-caches from the records up to `covered` only the bytes not yet in LTS, and replays the
records after `covered` in full; so the durable log may drop everything older than both
`covered` and the oldest byte not yet in LTS, and recovery time is bounded by the cache
size and the checkpoint interval, however long the streams are. A checkpoint whose record
is the next one after `covered` (nothing was in flight) covers every record before it, so
the ledgers before its own may go too: an idle container's checkpoint into a new ledger
lets the ledgers holding its data go once that data is in LTS.
"""

from __future__ import annotations

import msgspec

from streamvault.dataplane.container.segment import Chunk, Segment


class SegmentSnapshot(msgspec.Struct, array_like=True):
    segment_id: int
    name: bytes
    length: int
    start_offset: int
    sealed: bool
    storage_length: int
    writers: list[tuple[bytes, int]]
    chunks: list[tuple[int, int, str, int]]


class Snapshot(msgspec.Struct, array_like=True):
    next_segment_id: int
    segments: list[SegmentSnapshot]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Snapshot)


def take(segments: list[Segment], next_segment_id: int) -> bytes:
    """The committed metadata of `segments` (never the pending view)."""
    return _encoder.encode(
        Snapshot(
            next_segment_id,
            [
                SegmentSnapshot(
                    s.segment_id,
                    s.name,
                    s.length,
                    s.start_offset,
                    s.sealed,
                    s.storage_length,
                    list(s.writers.items()),
                    [tuple(c) for c in s.chunks],
                )
                for s in segments
                if s.created
            ],
        )
    )


def load(data: bytes) -> tuple[int, list[Segment]]:
    snapshot = _decoder.decode(data)
    segments = []
    for s in snapshot.segments:
        seg = Segment(s.segment_id, s.name)
        seg.created = True
        seg.length = seg.pending_length = s.length
        seg.start_offset = s.start_offset
        seg.sealed = seg.pending_sealed = s.sealed
        seg.storage_length = s.storage_length
        seg.writers = dict(s.writers)
        seg.chunks = [Chunk(*c) for c in s.chunks]
        segments.append(seg)
    return snapshot.next_segment_id, segments
