"""A reader group's shared state and its pure transitions.

The state is one msgpack record: the group's streams, its online readers, and every
segment with its read position, owner ("" = unassigned) and whether it was read to its end.
Transitions are pure functions returning a new state (or None when nothing changes); the
synchronizer applies them with conditional appends, so two readers never own one segment.

Fair share: with R online readers and S segments not yet completed, each reader holds at
most ceil(S / R) segments; a reader above its share releases the excess at the position of
the next event it has not returned, so no event is skipped or returned twice.
"""

from __future__ import annotations

import math

import msgspec


class SegmentSlot(msgspec.Struct):
    segment: str
    offset: int = 0
    owner: str = ""
    completed: bool = False


class GroupState(msgspec.Struct):
    streams: list[str]
    readers: list[str] = []
    segments: list[SegmentSlot] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GroupState)


def encode_state(state: GroupState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> GroupState:
    return _decoder.decode(data)


def _copy(state: GroupState) -> GroupState:
    return decode_state(encode_state(state))


def add_reader(state: GroupState, reader: str) -> GroupState | None:
    if reader in state.readers:
        return None
    new = _copy(state)
    new.readers.append(reader)
    return new


def remove_reader(state: GroupState, reader: str, positions: dict[str, int]) -> GroupState | None:
    """Take `reader` offline; its segments go back at `positions` (else their stored offset)."""
    if reader not in state.readers and not any(s.owner == reader for s in state.segments):
        return None
    new = _copy(state)
    new.readers = [r for r in new.readers if r != reader]
    for slot in new.segments:
        if slot.owner == reader:
            slot.owner = ""
            slot.offset = positions.get(slot.segment, slot.offset)
    return new


def fair_share(state: GroupState) -> int:
    active = sum(1 for s in state.segments if not s.completed)
    return math.ceil(active / max(1, len(state.readers)))


def owned(state: GroupState, reader: str) -> list[SegmentSlot]:
    return [s for s in state.segments if s.owner == reader and not s.completed]


def acquire(state: GroupState, reader: str) -> GroupState | None:
    """Give `reader` unassigned segments up to its fair share."""
    if reader not in state.readers:
        return None
    want = fair_share(state) - len(owned(state, reader))
    free = [s for s in state.segments if not s.owner and not s.completed]
    if want <= 0 or not free:
        return None
    new = _copy(state)
    taken = 0
    for slot in new.segments:
        if taken == want:
            break
        if not slot.owner and not slot.completed:
            slot.owner = reader
            taken += 1
    return new


def release(state: GroupState, reader: str, segment: str, offset: int) -> GroupState | None:
    new = _copy(state)
    for slot in new.segments:
        if slot.segment == segment and slot.owner == reader:
            slot.owner = ""
            slot.offset = offset
            return new
    return None


def complete(state: GroupState, reader: str, segment: str, offset: int) -> GroupState | None:
    new = _copy(state)
    for slot in new.segments:
        if slot.segment == segment and slot.owner == reader:
            slot.owner = ""
            slot.offset = offset
            slot.completed = True
            return new
    return None
