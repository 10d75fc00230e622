"""The container state machine, driven directly (no sockets): validation, deduplication,
group commit, sealing, reads, replay."""

from __future__ import annotations

import pytest

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    ConditionalCheckFailed,
    InvalidEventNumber,
    InvalidMessage,
    NoSuchSegment,
    SegmentSealed,
)
from streamvault.dataplane.container import Container
from streamvault.dataplane.log.local_log import WriteBuffer

PEER = b"peer-1"
W1, W2 = b"1" * 16, b"2" * 16
SEG = b"s/t/0"


def framed(*events: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in events)


class Harness:
    """A container whose records go to an in-memory 'log' (a list of record payloads)."""

    def __init__(self) -> None:
        self.container = Container(0, frame_payload_bytes=64 * 1024)
        self.records: list[bytes] = []
        self.replies: list[tuple[bytes, object]] = []

    def reply(self, frames) -> object:
        return codec.decode(frames)[1] if frames is not None else None

    def commit(self) -> list[object]:
        """Build and 'durably write' every queued record; return the decoded replies."""
        out = []
        while built := self.container.build_frame(lambda n: WriteBuffer(n, pooled=False)):
            buffer, size, token = built
            self.records.append(bytes(buffer.payload[:size]))
            effects, _ = self.container.committed(token, 1, 4096 * len(self.records))
            out += [codec.decode(frames)[1] for _, frames in effects]
            buffer.close()
        return out

    def create(self, name: bytes = SEG) -> None:
        assert self.container.create_segment(PEER, 1, name) is None
        assert self.commit() == [m.Done(changed=True)]
        self.container.setup_append(PEER, 2, m.SetupAppend(W1, name))
        self.container.setup_append(PEER, 3, m.SetupAppend(W2, name))

    def append(
        self,
        writer: bytes,
        first: int,
        last: int,
        events: list[bytes],
        *,
        expected: int = -1,
        name: bytes = SEG,
    ):
        data = framed(*events)
        block = m.AppendBlock(writer, first, last, len(events), expected, name, data)
        return self.reply(self.container.append(PEER, 9, block, len(data)))


def test_blocks_are_acknowledged_only_after_commit_with_cumulative_acks():
    h = Harness()
    h.create()
    assert h.append(W1, 0, 1, [b"a", b"b"]) is None
    assert h.append(W1, 2, 2, [b"c"]) is None
    assert h.container.segments[SEG].length == 0, "nothing is visible before it is durable"
    acks = h.commit()
    assert acks == [m.DataAppended(W1, 2, 15, False, SEG)], "merged into one op, one ack"
    assert h.container.segments[SEG].length == 15
    assert len(h.records) == 2  # the CREATE record and one APPEND record


def test_duplicates_are_acknowledged_without_being_written():
    h = Harness()
    h.create()
    h.append(W1, 0, 4, [b"x"] * 5)
    assert h.append(W1, 0, 4, [b"x"] * 5) is None, "a resend of an in-flight block waits"
    acks = h.commit()
    assert [a.duplicate for a in acks] == [False, True]
    dup = h.append(W1, 0, 4, [b"x"] * 5)
    assert isinstance(dup, m.DataAppended) and dup.duplicate and dup.last_event_number == 4
    assert h.container.segments[SEG].length == 25
    with pytest.raises(InvalidEventNumber):
        h.append(W1, 3, 7, [b"x"] * 5)  # overlaps the stored number
    with pytest.raises(InvalidEventNumber):
        h.append(W1, 9, 8, [b"x"])
    assert h.append(W2, 0, 0, [b"y"]) is None, "writers are deduplicated independently"


def test_append_needs_setup_and_an_existing_unsealed_segment():
    h = Harness()
    h.create()
    with pytest.raises(InvalidMessage, match="without SetupAppend"):
        h.container.append(b"other", 1, m.AppendBlock(W1, 0, 0, 1, -1, SEG, framed(b"a")), 5)
    with pytest.raises(NoSuchSegment):
        h.append(W1, 0, 0, [b"a"], name=b"s/t/9")
    h.append(W1, 0, 0, [b"a"])
    assert h.container.seal_segment(PEER, 4, SEG) is None
    with pytest.raises(SegmentSealed):
        h.append(W1, 1, 1, [b"b"])
    replies = h.commit()
    assert replies[-1] == m.SegmentInfo(SEG.decode(), 5, 0, True)
    with pytest.raises(SegmentSealed):
        h.container.setup_append(PEER, 5, m.SetupAppend(W1, SEG))


def test_conditional_append_checks_the_offset_including_queued_data():
    h = Harness()
    h.create()
    h.append(W1, 0, 0, [b"abc"], expected=0)
    with pytest.raises(ConditionalCheckFailed) as err:
        h.append(W1, 1, 1, [b"d"], expected=0)
    assert err.value.fields["current_offset"] == 7
    assert h.append(W1, 1, 1, [b"d"], expected=7) is None
    h.commit()
    assert h.container.segments[SEG].length == 12


def test_reads_see_only_durable_data_and_tail_reads_wait():
    h = Harness()
    h.create()
    h.append(W1, 0, 0, [b"hello"])
    plan = h.container.read(PEER, 7, m.ReadSegment(0, 1024, 1000, SEG), now=0.0)
    assert plan is None, "a read at the durable tail waits"
    h.container.build_frame(lambda n: WriteBuffer(n, pooled=False))
    token = h.container.in_flight[0]
    _, plans = h.container.committed(token, 3, 8192)
    assert len(plans) == 1 and plans[0].offset == 0 and plans[0].segment_length == 9
    assert sum(p.length for p in plans[0].pieces) == 9
    assert plans[0].pieces[0].ledger_id == 3
    assert h.container.counters["log_reads"] == 1, "no cache here: the bytes come from the log"
    parked = h.container.read(PEER, 8, m.ReadSegment(9, 1024, 1000, SEG), now=0.0)
    assert parked is None
    expired = h.container.expire_reads(now=2.0)
    assert len(expired) == 1 and expired[0].pieces == [] and expired[0].request_id == 8


def test_replaying_the_records_rebuilds_the_same_state():
    h = Harness()
    h.create()
    h.create(b"s/t/1")
    for i in range(10):
        h.append(W1, i, i, [b"e%d" % i])
        h.append(W2, 100 + i, 100 + i, [b"f%d" % i], name=b"s/t/1")
        h.commit()
    h.container.delete_segment(PEER, 1, b"s/t/1")
    h.commit()
    fresh = Container(0)
    for index, record in enumerate(h.records, start=1):
        fresh.replay(memoryview(record), 1, 4096 * index)
    assert set(fresh.segments) == {SEG}
    seg, old = fresh.segments[SEG], h.container.segments[SEG]
    assert (seg.length, seg.writers, seg.sealed) == (old.length, old.writers, old.sealed)
    assert seg.plan(0, 1 << 20) == old.plan(0, 1 << 20)


def test_containers_sharing_a_worker_cache_never_see_each_others_bytes(tmp_path):
    """Segment ids are per container; the worker's cache is shared by its containers."""
    from streamvault.dataplane.cache import BlockRing, SharedCache
    from streamvault.dataplane.cache.segment_cache import SegmentCache

    cache = SharedCache.create(str(tmp_path / "c"), 4 << 20, regions=1, block_bytes=64 * 1024)
    shared = SegmentCache(BlockRing(cache, 0))
    harnesses = []
    for cid, fill in ((0, b"a"), (1, b"b")):
        h = Harness()
        h.container = Container(cid, frame_payload_bytes=64 * 1024, cache=shared)
        h.create()  # both get segment id 1
        for i in range(3):
            h.append(W1, i, i, [fill * 1000])
            built = h.container.build_frame(lambda n: WriteBuffer(n, pooled=False))
            buffer, size, token = built
            h.container.committed(token, 1, 4096, buffer.payload, 0.0)
            buffer.close()
        harnesses.append(h)
    for h, fill in zip(harnesses, (b"a", b"b"), strict=True):
        plan = h.container.read(PEER, 1, m.ReadSegment(0, 1 << 20, 0, SEG), now=0.0)
        data = b"".join(bytes(v) for v in plan.views)
        assert data == framed(fill * 1000) * 3
        assert h.container.counters["cache_reads"] == 1
        assert h.container.counters["log_reads"] == 0
    cache.close()


def test_segment_pieces_cover_exactly_the_range_asked():
    from streamvault.dataplane.container.segment import Segment

    seg = Segment(1, SEG)
    for offset, position in ((0, 100), (1000, 5000), (2500, 9000)):
        seg.index_add(offset, 1, position)
    seg.length = 4000
    for start, end in ((0, 4000), (10, 3999), (999, 1001), (2500, 2500), (3000, 4000)):
        pieces = seg.pieces(start, end)
        assert sum(p.length for p in pieces) == end - start
    assert seg.pieces(10, 1500)[0].position == 110


def test_a_failed_upload_is_retried_as_the_same_range_and_chunk_name():
    """The uploader may have stored the chunk before failing: the retry must name it again,
    even though the segment grew meanwhile, or the stored chunk would be an orphan."""
    from streamvault.dataplane.container.tiering import TieringConfig

    h = Harness()
    h.container = Container(
        0, frame_payload_bytes=64 * 1024, tiering=TieringConfig(flush_bytes=10, flush_wait_s=1e9)
    )
    h.create()
    h.append(W1, 0, 0, [b"x" * 100])
    h.commit()
    (first,) = h.container.uploads_due(now=0.0)
    assert (first.start, first.end) == (0, 104)
    assert h.container.uploads_due(now=0.0) == [], "one upload per segment at a time"
    h.append(W1, 1, 1, [b"y" * 100])
    h.commit()
    h.container.upload_failed(first.segment_id, first.end)
    (again,) = h.container.uploads_due(now=0.0)
    assert again.chunk == first.chunk and again.end == 104
    h.container.uploaded(again.segment_id, 0, 104, again.chunk, 50)
    h.commit()
    (rest,) = h.container.uploads_due(now=0.0)
    assert (rest.start, rest.end) == (104, 208)


def test_chunk_for_finds_the_chunk_holding_an_offset_among_many():
    from streamvault.dataplane.container.segment import Chunk, Segment

    seg = Segment(1, SEG)
    starts = [0, 10, 11, 500, 501, 10_000]
    ends = [*starts[1:], 10_007]
    seg.chunks = [Chunk(s, e, f"c{s}", 1) for s, e in zip(starts, ends, strict=True)]
    for s, e in zip(starts, ends, strict=True):
        assert seg.chunk_for(s).start == s and seg.chunk_for(e - 1).start == s
    assert seg.chunk_for(10_007) is None
    seg.chunks = seg.chunks[2:]  # truncated below 11
    assert seg.chunk_for(5) is None and seg.chunk_for(11).start == 11


class LedgerHarness(Harness):
    """Records get (ledger, entry) positions: `ledger` is where the next ones go."""

    def __init__(self, **config) -> None:
        super().__init__()
        from streamvault.dataplane.container.tiering import TieringConfig

        tiering = TieringConfig(flush_bytes=10, flush_wait_s=1e9)
        self.container = Container(0, frame_payload_bytes=64 * 1024, tiering=tiering, **config)
        self.ledger, self.entries, self.now = 1, {}, 0.0

    def build(self) -> list[tuple[object, list]]:
        built = []
        while frame := self.container.build_frame(lambda n: WriteBuffer(n, pooled=False)):
            buffer, _, token = frame
            buffer.close()
            built.append(token)
        return built

    def commit_built(self, tokens: list) -> None:
        for token in tokens:
            entry = self.entries.get(self.ledger, 0)
            self.entries[self.ledger] = entry + 1
            self.container.committed(token, self.ledger, 4096 * entry, None, self.now, entry)

    def commit(self) -> list[object]:
        self.commit_built(self.build())
        return [m.Done(changed=True)]

    def upload_all(self) -> None:
        for task in self.container.uploads_due(now=self.now):
            self.container.uploaded(task.segment_id, task.start, task.end, task.chunk, 1)
        self.commit()


def test_an_idle_container_with_everything_in_lts_checkpoints_so_older_ledgers_can_go():
    h = LedgerHarness(idle_s=5.0)
    c = h.container
    h.create()
    h.append(W1, 0, 0, [b"x" * 100])
    h.commit()
    h.now = 10.0
    assert not c.idle_checkpoint_due(h.now), "bytes not yet in LTS pin their ledger"
    h.upload_all()  # the chunk record: ledger 1 again, at 10 s
    assert not c.idle_checkpoint_due(14.0), "idle for 4 s only"
    assert c.idle_checkpoint_due(15.0)
    c.checkpoint_idle()
    h.ledger, h.now = 2, 15.0  # the worker rolled the log over first
    h.commit()
    assert c.truncate_before == 2, "the checkpoint follows the record it covers: ledger 1 goes"
    assert c.counters["idle_checkpoints"] == 1
    assert not c.idle_checkpoint_due(100.0), "nothing written since the idle checkpoint"
    h.append(W1, 1, 1, [b"y" * 100])
    h.commit()
    assert not c.idle_checkpoint_due(200.0), "new bytes not yet in LTS"
    h.upload_all()
    assert c.idle_checkpoint_due(200.0 + 5.0)


def test_an_idle_containers_tail_goes_to_lts_without_waiting_for_the_flush_time():
    from streamvault.dataplane.container.tiering import TieringConfig

    h = LedgerHarness()
    h.container = Container(
        0,
        frame_payload_bytes=64 * 1024,
        tiering=TieringConfig(flush_bytes=1 << 30, flush_wait_s=1e9),
        idle_s=5.0,
    )
    h.create()
    h.append(W1, 0, 0, [b"x" * 100])
    h.commit()  # at 0 s
    assert h.container.uploads_due(now=4.0) == [], "below flush_bytes, not idle yet"
    (task,) = h.container.uploads_due(now=5.0)
    assert (task.start, task.end) == (0, 104)


def test_a_checkpoint_with_a_record_between_it_and_what_it_covers_keeps_that_ledger():
    """Recovery replays the records after the covered one: one still in flight when the
    checkpoint was taken, in the old ledger, must keep that ledger."""
    h = LedgerHarness(checkpoint_records=1)
    c = h.container
    h.create()  # (1, 0)
    assert c.create_segment(PEER, 5, b"s/t/1") is None  # a record holding no data
    between = h.build()  # in flight: (1, 1)
    assert c.maybe_checkpoint()
    checkpoint_record = h.build()
    h.commit_built(between)
    h.ledger = 2
    h.commit_built(checkpoint_record)  # (2, 0)
    assert c.truncate_before == 1, "(1, 1) is not covered: ledger 1 stays"
