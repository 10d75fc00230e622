"""Writes and reads through real processes: exactly once, in order per routing key."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support.history import check_exactly_once, event, expected_counts, parse, read_all, unique

from streamvault.client import StreamManager

KEYS = 64
EVENTS = 100_000


def test_100k_events_64_keys_4_segments_read_by_2_readers_exactly_once_in_key_order(standalone):
    """The foundation's acceptance test: per-event writes, a 2-reader group, every event
    exactly once and each key's events in write order."""
    scope, stream = unique("s"), unique("t")
    with StreamManager(standalone.controller) as mgr:
        assert mgr.create_scope(scope)
        assert mgr.create_stream(scope, stream, initial_segments=4)
        with mgr.create_writer(scope, stream) as writer:
            futures = [
                writer.write_event(event(i % KEYS, i // KEYS), routing_key=f"key-{i % KEYS}")
                for i in range(EVENTS)
            ]
            writer.flush(timeout=120)
        assert all(f.done() and f.exception() is None for f in futures)
        got = read_all(mgr, scope, stream, total=EVENTS)
    check_exactly_once(got, expected_counts(EVENTS, KEYS))


def test_write_events_lists_and_numpy_arrays_are_read_back_in_order(shared_standalone):
    """Batches of bytes and 2-D uint8 arrays (including batches larger than one block) land
    whole and in order."""
    scope, stream = unique("s"), unique("t")
    with StreamManager(shared_standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=2)
        with mgr.create_writer(scope, stream) as writer:
            futures = []
            for batch in range(20):
                futures.append(
                    writer.write_events(
                        [event(0, batch * 1000 + i) for i in range(1000)], routing_key="k0"
                    )
                )
            rows = np.frombuffer(b"".join(event(1, i) for i in range(12_000)), dtype=np.uint8)
            futures.append(writer.write_events(rows.reshape(12_000, 100), routing_key="k1"))
            for f in futures:
                f.result(timeout=60)
        got = read_all(mgr, scope, stream, total=32_000)
    check_exactly_once(got, {0: 20_000, 1: 12_000})
    assert {parse(d)[0] for d in got} == {0, 1}


def test_large_events_up_to_the_limit_round_trip(shared_standalone):
    """Events far larger than a log frame (up to 8 MiB) are stored and read back intact."""
    scope, stream = unique("s"), unique("t")
    sizes = [0, 1, 4096, 1024 * 1024 + 7, 8 * 1024 * 1024]
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    with StreamManager(shared_standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=1)
        with mgr.create_writer(scope, stream) as writer:
            for p in payloads:
                writer.write_event(p, routing_key="big")
            writer.flush(timeout=60)
        group = unique("g")
        mgr.create_reader_group(scope, group, [stream])
        with mgr.create_reader(scope, group, "r") as reader:
            got = []
            while len(got) < len(payloads):
                ev = reader.read_next_event(10)
                assert ev is not None, f"only {len(got)} of {len(payloads)} events read"
                got.append(ev.data)
    assert [len(g) for g in got] == sizes
    assert got == payloads


def test_a_reader_reads_ahead_of_the_caller_and_holds_a_bounded_buffer(shared_standalone):
    """The next read of a segment is asked for while the last reply's events are returned:
    a reply waits for the caller, the caller does not wait for the server. What a reader
    holds stays bounded: per segment less than two replies' events plus one in flight."""
    scope, stream = unique("s"), unique("t")
    payload = [b"x" * 996 for _ in range(1000)]  # 1000 B framed: ~1 MB per call
    with StreamManager(shared_standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=2)
        with mgr.create_writer(scope, stream) as writer:
            for call in range(12):
                writer.write_events(payload, routing_key=f"k{call % 2}")
            writer.flush(timeout=60)
        mgr.create_reader_group(scope, "g", [stream])
        with mgr.create_reader(scope, "g", "r") as reader:
            read = 0
            ahead = 0
            while read < 12_000:
                assert reader.read_next_event(10.0) is not None, f"stalled after {read}"
                read += 1
                if read % 100:
                    continue
                owned = list(reader._owned.values())
                ahead += sum(1 for seg in owned if seg.events and seg.request_id)
                assert len(reader._by_request) <= len(owned)
                for seg in owned:
                    held = sum(int((b.lengths[b.next :] + 4).sum()) for b in seg.events)
                    assert held < 2 * reader._read_bytes
            assert ahead > 0, "no read was ever asked for while events were buffered"


def test_batches_of_events_are_read_back_exactly_once_in_order_without_copies(
    shared_standalone,
):
    """`read_next_events`: batches of one segment each, mixed with single reads, give every
    event once and in key order; a batch of equal-size events is a 2-D array over the
    reply's bytes; offsets and position agree with what single reads report."""
    from streamvault.client.errors import InvalidArgument

    scope, stream = unique("s"), unique("t")
    fixed = np.frombuffer(b"".join(event(0, i) for i in range(6000)), dtype=np.uint8)
    with StreamManager(shared_standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, stream, initial_segments=2)
        with mgr.create_writer(scope, stream) as writer:
            writer.write_events(fixed.reshape(6000, 100), routing_key="k0")
            # key 1: sizes that change from event to event, and empty-tailed runs
            writer.write_events(
                [event(1, i, size=20 + i % 7 * 50) for i in range(3000)], routing_key="k1"
            ).result(timeout=60)
            writer.flush(timeout=60)
        mgr.create_reader_group(scope, "g", [stream])
        got: list[bytes] = []
        rows = 0
        with mgr.create_reader(scope, "g", "r") as reader:
            with pytest.raises(InvalidArgument, match="max_events"):
                reader.read_next_events(1.0, max_events=0)
            deadline = time.monotonic() + 60
            calls = 0
            while len(got) < 9000 and time.monotonic() < deadline:
                calls += 1
                if calls % 5 == 0:  # single reads between batches share the same buffers
                    single = reader.read_next_event(1.0)
                    if single is not None:
                        got.append(single.data)
                    continue
                batch = reader.read_next_events(1.0, max_events=700)
                if batch is None:
                    continue
                assert 1 <= len(batch) <= 700
                items = list(batch)
                assert [e.data for e in items] == [batch[i] for i in range(len(batch))]
                assert batch.offsets.tolist() == [e.offset for e in items]
                assert {e.segment for e in items} == {batch.segment}
                last = items[-1]
                assert batch.position == (batch.segment, last.offset + 4 + len(last.data))
                keys = {parse(e.data)[0] for e in items}
                assert len(keys) == 1, "a batch holds one segment's events"
                if keys == {0}:
                    array = batch.array()
                    assert array.shape == (len(batch), 100) and not array.flags.writeable
                    assert array.base is not None  # a view, not a copy
                    assert bytes(array[-1]) == last.data
                    rows += len(array)
                elif len({len(e.data) for e in items}) > 1:
                    with pytest.raises(InvalidArgument, match="different sizes"):
                        batch.array()
                got.extend(e.data for e in items)
            assert reader.read_next_events(0.3) is None  # nothing beyond what was written
    check_exactly_once(got, {0: 6000, 1: 3000})
    assert rows > 0
