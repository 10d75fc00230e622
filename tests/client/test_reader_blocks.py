"""The reader's buffering of replies: any cut of a segment's bytes into reply frames gives
back every event once, in order, at its offset, whether taken one at a time or in batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvault.client import reader
from streamvault.client.protocol import events
from streamvault.client.protocol.errors import InvalidMessage
from streamvault.client.protocol.limits import EVENT_BYTES_MAX, EVENT_HEADER_BYTES

payload_lists = st.one_of(
    st.lists(st.binary(max_size=200), max_size=60),
    st.lists(  # runs of equal sizes, as fixed-size samples make
        st.tuples(st.integers(0, 30), st.integers(1, 80)), max_size=5
    ).map(lambda runs: [bytes([n % 251]) * size for size, count in runs for n in range(count)]),
)


def _offsets(payloads: list[bytes]) -> list[int]:
    out, pos = [], 0
    for p in payloads:
        out.append(pos)
        pos += EVENT_HEADER_BYTES + len(p)
    return out


@settings(max_examples=300, deadline=None)
@given(
    payload_lists,
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=8),
    st.lists(st.sampled_from(["event", 1, 3, 1024]), min_size=1, max_size=6),
    st.booleans(),
)
def test_any_cut_into_frames_reads_back_every_event_once_in_order(payloads, cuts, takes, joined):
    """Parts as frames' views, or as bytes (what a reply of several frames is joined to)."""
    block = events.frame_events(payloads)
    bounds = sorted({min(c, len(block)) for c in cuts} | {len(block)})
    seg = reader._SegmentRead("s/t/0", 0)
    got: list[tuple[int, bytes]] = []
    turn = 0
    start = 0
    for bound in bounds:
        part = block[start:bound] if joined else memoryview(block)[start:bound]
        reader._add_part(seg, part, start)
        start = bound
        while seg.events:  # take what is buffered, alternating single reads and batches
            how = takes[turn % len(takes)]
            turn += 1
            if how == "event":
                ev = reader._take_event(seg)
                assert type(ev.data) is bytes
                got.append((ev.offset, ev.data))
                assert seg.position == ev.offset + EVENT_HEADER_BYTES + len(ev.data)
                continue
            batch = reader._take_batch(seg, how)
            assert seg.position == batch.position[1]
            assert 1 <= len(batch) <= how
            items = list(batch)
            assert batch.offsets.tolist() == [e.offset for e in items]
            assert [batch[i] for i in range(len(batch))] == [e.data for e in items]
            if len({len(e.data) for e in items}) == 1:
                rows = batch.array()
                assert not rows.flags.writeable
                assert [bytes(r) for r in rows] == [e.data for e in items]
            got.extend((e.offset, e.data) for e in items)
    assert seg.pending == b""
    assert got == list(zip(_offsets(payloads), payloads, strict=True))


def test_a_header_split_across_frames_and_an_event_across_three_frames() -> None:
    payloads = [b"a" * 10, b"b" * 3000, b"c"]
    block = events.frame_events(payloads)
    seg = reader._SegmentRead("s/t/0", 0)
    cuts = [0, 16, 500, 2000, len(block)]  # 16: two bytes into the second event's header
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        reader._add_part(seg, memoryview(block)[lo:hi], lo)
    data = [reader._take_event(seg).data for _ in payloads]
    assert data == payloads and not seg.events and seg.pending == b""


def test_a_length_beyond_the_limit_fails_before_waiting_for_the_rest() -> None:
    seg = reader._SegmentRead("s/t/0", 0)
    bad = events.frame_events([b"ok"]) + events.EVENT_HEADER.pack(EVENT_BYTES_MAX + 1)
    reader._add_part(seg, memoryview(bad)[:8], 0)  # the bad header begins in the first frame
    with pytest.raises(InvalidMessage, match="at offset 6"):
        reader._add_part(seg, memoryview(bad)[8:], 8)


def test_array_refuses_events_of_different_sizes() -> None:
    data = events.frame_events([b"ab", b"abc"])
    starts, lengths, _ = events.index_events(data)
    batch = reader.EventBatch("s/t/0", memoryview(data), 0, starts, lengths)
    with pytest.raises(reader.InvalidArgument, match="different sizes"):
        batch.array()
    assert batch.position == ("s/t/0", len(data)) and np.array_equal(batch.offsets, [0, 6])


def test_a_reader_asks_for_its_share_of_the_buffer_per_read() -> None:
    """Up to 4 segments: 4 MiB per read; beyond, the reader's buffer shared out (three
    replies a segment), never below READ_BYTES_MIN."""
    from streamvault.client.protocol.limits import READ_BYTES_MAX

    sizes = {n: reader.read_bytes_for(n) for n in (0, 1, 4, 5, 16, 64, 1024)}
    assert sizes[0] == sizes[1] == sizes[4] == READ_BYTES_MAX
    assert sizes[5] * 3 * 5 <= reader.READER_BUFFER_BYTES < READ_BYTES_MAX * 3 * 5
    assert sizes[16] * 3 * 16 <= reader.READER_BUFFER_BYTES
    assert sizes[1024] == reader.READ_BYTES_MIN
    assert list(sizes.values()) == sorted(sizes.values(), reverse=True)
