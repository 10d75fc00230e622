"""Event framing: what a writer frames, a reader splits back, from any cut of the bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvault.client.protocol import events
from streamvault.client.protocol.errors import InvalidMessage
from streamvault.client.protocol.limits import EVENT_BYTES_MAX, EVENT_HEADER_BYTES


def test_whole_events_are_split_and_a_partial_one_is_left() -> None:
    block = events.frame_events([b"a", b"", b"ccc"])
    found, used = events.split_events(memoryview(block + b"\x09\x00\x00\x00abc"), 100)
    assert found == [(100, b"a"), (105, b""), (109, b"ccc")]
    assert used == len(block)
    assert all(type(data) is bytes for _, data in found)  # never a view of the buffer


def test_a_length_beyond_the_limit_is_invalid() -> None:
    bad = events.EVENT_HEADER.pack(EVENT_BYTES_MAX + 1) + b"x" * 8
    with pytest.raises(InvalidMessage, match="at offset 7"):
        events.split_events(events.frame_events([b"ok"]) + bad, 1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=40),
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=6),
)
def test_any_cut_of_framed_events_splits_back_into_them(payloads, cuts) -> None:
    """Reading a segment in pieces cut anywhere (as replies are), carrying the unconsumed
    tail over as the reader does, gives back every event once, in order, at its offset."""
    block = events.frame_events(payloads)
    bounds = sorted({min(c, len(block)) for c in cuts} | {len(block)})
    got: list[tuple[int, bytes]] = []
    pending, start = b"", 0
    for bound in bounds:
        piece = memoryview(block)[start:bound]
        buffer = pending + bytes(piece) if pending else piece
        found, used = events.split_events(buffer, bound - len(buffer))
        got.extend(found)
        pending, start = bytes(buffer[used:]), bound
    assert pending == b""
    offsets, pos = [], 0
    for payload in payloads:
        offsets.append(pos)
        pos += EVENT_HEADER_BYTES + len(payload)
    assert got == list(zip(offsets, payloads, strict=True))


def _runs():
    """Payload lists with runs of equal sizes, as fixed-size samples make (and breaks)."""
    return st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=300)),
        max_size=8,
    ).map(lambda runs: [bytes([n % 251]) * size for size, count in runs for n in range(count)])


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.lists(st.binary(max_size=300), max_size=40), _runs()),
    st.integers(min_value=0, max_value=200_000),
)
def test_index_events_finds_what_split_events_finds(payloads, cut) -> None:
    """Any cut of framed events, with equal-size runs or not: the index names the same
    events (start, length) and consumes the same bytes as splitting them one by one."""
    block = events.frame_events(payloads)[:cut]
    found, used = events.split_events(block, 0)
    starts, lengths, consumed = events.index_events(block)
    assert consumed == used
    assert starts.dtype == lengths.dtype == np.int64
    got = [
        (int(s) - EVENT_HEADER_BYTES, block[s : s + n])
        for s, n in zip(starts, lengths, strict=True)
    ]
    assert got == found


def test_index_events_measures_a_long_run_then_reads_the_rest_one_by_one() -> None:
    payloads = [b"a" * 10] * 5000 + [b"bb", b"", b"c" * 10] + [b"d" * 7] * 3
    block = events.frame_events(payloads) + b"\x05\x00\x00\x00ab"  # and a partial event
    starts, lengths, used = events.index_events(block)
    assert used == len(block) - 6
    assert lengths.tolist() == [len(p) for p in payloads]
    assert [
        block[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)
    ] == payloads


def test_index_events_rejects_a_length_beyond_the_limit() -> None:
    bad = events.EVENT_HEADER.pack(EVENT_BYTES_MAX + 1) + b"x" * 8
    with pytest.raises(InvalidMessage, match="at offset 6"):
        events.index_events(events.frame_events([b"ok"]) + bad)
    empty_starts, _, used = events.index_events(b"\x01\x00")
    assert len(empty_starts) == 0 and used == 0
