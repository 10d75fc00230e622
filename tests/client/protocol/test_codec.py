"""The wire codec: every message round-trips; no byte string decodes into anything but a
message or InvalidMessage/UnsupportedVersion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import InvalidMessage, UnsupportedVersion

i64 = st.integers(min_value=0, max_value=(1 << 63) - 1)
writer_ids = st.binary(min_size=16, max_size=16)
names = st.text(min_size=1, max_size=60).map(str.encode).filter(lambda b: 0 < len(b) <= 512)
rids = st.integers(min_value=0, max_value=(1 << 64) - 1)


@st.composite
def append_blocks(draw):
    count = draw(st.integers(min_value=1, max_value=50))
    first = draw(st.integers(min_value=0, max_value=1 << 40))
    payload = draw(st.binary(min_size=4 * count, max_size=4 * count + 300))
    return m.AppendBlock(
        draw(writer_ids),
        first,
        first + count - 1 + draw(st.integers(0, 9)),
        count,
        draw(st.integers(-1, 1 << 40)),
        draw(names),
        payload,
    )


@st.composite
def segment_reads(draw):
    payload = draw(st.lists(st.binary(min_size=1, max_size=200), max_size=4))
    offset = draw(st.integers(0, 1 << 40))
    length = offset + sum(map(len, payload)) + draw(st.integers(0, 1000))
    return m.SegmentRead(offset, length, draw(st.booleans()), draw(names), payload)


@st.composite
def add_entries(draw):
    entry = draw(st.integers(0, 1 << 40))
    return m.AddEntry(
        draw(i64),
        entry,
        draw(i64),
        draw(st.integers(-1, entry - 1)),
        draw(st.integers(0, (1 << 32) - 1)),
        draw(st.binary(max_size=300)),
    )


@st.composite
def entry_reads(draw):
    found = draw(st.booleans())
    payload = draw(st.binary(max_size=300)) if found else b""
    return m.EntryRead(
        draw(i64),
        draw(st.integers(-1, 1 << 40)),
        draw(st.integers(-1, 1 << 40)),
        draw(st.integers(-1, 1 << 40)),
        draw(st.booleans()),
        found,
        payload,
    )


bodies = st.one_of(
    append_blocks(),
    add_entries(),
    entry_reads(),
    st.builds(m.EntryAdded, i64, i64),
    st.builds(m.ReadEntry, i64, st.integers(-1, 1 << 40), i64, st.booleans()),
    st.builds(m.DeleteLedger, ledger_id=i64),
    segment_reads(),
    st.builds(m.SetupAppend, writer_ids, names),
    st.builds(m.AppendSetup, writer_ids, st.integers(-1, 1 << 50), i64, st.booleans(), names),
    st.builds(m.DataAppended, writer_ids, st.integers(-1, 1 << 50), i64, st.booleans(), names),
    st.builds(m.ReadSegment, i64, st.integers(1, 4 << 20), st.integers(0, 60_000), names),
    st.builds(m.Hello, st.integers(0, 9), st.integers(0, 9), st.text(max_size=20)),
    st.builds(
        m.CreateStream,
        scope=st.text(max_size=20),
        stream=st.text(max_size=20),
        initial_segments=st.integers(1, 100),
    ),
    st.builds(
        m.Heartbeat,
        role=st.text(max_size=9),
        id=st.text(max_size=9),
        pid=st.integers(0, 1 << 30),
        endpoint=st.text(max_size=30),
        state=st.text(max_size=9),
        containers=st.lists(st.integers(0, 1000), max_size=5),
    ),
    st.builds(
        m.SegmentInfo,
        segment=st.text(max_size=30),
        length=i64,
        start_offset=i64,
        sealed=st.booleans(),
    ),
)


def _normal(body):
    if isinstance(body, (m.AddEntry, m.EntryRead)):
        return body._replace(payload=bytes(codec._view(body.payload)))
    if isinstance(body, m.AppendBlock):
        return body._replace(payload=bytes(codec._view(body.payload)))
    if isinstance(body, m.SegmentRead):
        return body._replace(payload=b"".join(bytes(codec._view(p)) for p in body.payload))
    return body


@settings(max_examples=400, deadline=None)
@given(bodies, rids)
def test_every_message_round_trips(body, rid):
    frames = codec.encode(body, rid)
    header, decoded = codec.decode([bytes(codec._view(f)) for f in frames])
    assert header.request_id == rid
    assert _normal(decoded) == _normal(body)


@settings(max_examples=600, deadline=None)
@given(bodies, rids, st.data())
def test_any_truncation_gives_invalid_message(body, rid, data):
    frames = [bytes(codec._view(f)) for f in codec.encode(body, rid)]
    candidates = [i for i, f in enumerate(frames) if f]
    index = data.draw(st.sampled_from(candidates))
    cut = data.draw(st.integers(0, len(frames[index]) - 1))
    broken = list(frames)
    broken[index] = frames[index][:cut]
    with pytest.raises((InvalidMessage, UnsupportedVersion)):
        codec.decode(broken)


@settings(max_examples=200, deadline=None)
@given(bodies, rids, st.data())
def test_missing_or_extra_frames_give_invalid_message(body, rid, data):
    frames = [bytes(codec._view(f)) for f in codec.encode(body, rid)]
    if data.draw(st.booleans()) and len(frames) > 1:
        del frames[data.draw(st.integers(1, len(frames) - 1))]
    else:
        frames.append(b"extra")
    with pytest.raises((InvalidMessage, UnsupportedVersion)):
        codec.decode(frames)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=0, max_size=4))
def test_garbage_never_raises_anything_but_typed_errors(frames):
    try:
        codec.decode(frames)
    except (InvalidMessage, UnsupportedVersion):
        pass


@settings(max_examples=800, deadline=None)
@given(bodies, rids, st.data())
def test_corrupted_bytes_never_raise_anything_but_typed_errors(body, rid, data):
    frames = [bytearray(codec._view(f)) for f in codec.encode(body, rid)]
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(frames) - 1))
        if frames[index]:
            pos = data.draw(st.integers(0, len(frames[index]) - 1))
            frames[index][pos] = data.draw(st.integers(0, 255))
    try:
        codec.decode([bytes(f) for f in frames])
    except (InvalidMessage, UnsupportedVersion):
        pass


def test_limits_are_checked_before_bodies():
    head = codec.encode_header(m.MsgType.READ_SEGMENT, 1)
    with pytest.raises(InvalidMessage, match="max_bytes"):
        codec.decode([head + codec.READ_SEGMENT.pack(0, 1 << 30, 0, 5) + b"a/b/0"])
    with pytest.raises(InvalidMessage, match="event_count"):
        codec.decode(
            [
                head[:1]
                + bytes([m.MsgType.APPEND_BLOCK])
                + head[2:]
                + codec.APPEND_BLOCK.pack(b"w" * 16, 0, 0, 0, -1, 0, 5)
                + b"a/b/0",
                b"",
            ]
        )
    with pytest.raises(InvalidMessage, match="payload_bytes"):
        codec.decode(codec.encode(m.AppendBlock(b"w" * 16, 0, 9, 10, -1, b"a/b/0", b"xx"), 1))
    with pytest.raises(UnsupportedVersion):
        codec.decode([codec.encode_header(m.MsgType.HELLO, 1, version=200)])
    with pytest.raises(InvalidMessage, match="payload_bytes"):
        head = codec.encode_header(m.MsgType.ADD_ENTRY, 1)
        codec.decode([head + codec.ADD_ENTRY.pack(1, 0, 1, -1, 0, 1 << 30), b""])
    with pytest.raises(InvalidMessage, match="lac"):
        codec.decode(codec.encode(m.AddEntry(1, 3, 1, 3, 0, b"x"), 1))


def _zstd_reply(raw: bytes, frame: int, skip: int, take: int, **changes):
    import zstandard

    compressor = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    needed = -(-(skip + take) // frame)  # the frames up to the last byte carried
    frames = [compressor.compress(raw[i * frame : (i + 1) * frame]) for i in range(needed)]
    fields = dict(
        offset=1000 + skip,
        segment_length=1000 + len(raw),
        end_of_segment=False,
        segment=b"s/t/0.#epoch.0",
        skip=skip,
        raw_bytes=take,
        frames=frames,
    )
    fields.update(changes)
    return m.SegmentReadZstd(**fields)


def test_a_zstd_read_reply_decodes_to_the_read_reply_it_stands_for() -> None:
    raw = bytes(range(256)) * 4096  # 1 MiB
    body = _zstd_reply(raw, 256 * 1024, 1000, 700_000)
    header, got = codec.decode(codec.encode(body, 7))
    assert header.msg_type == m.MsgType.SEGMENT_READ_ZSTD and isinstance(got, m.SegmentRead)
    assert (got.offset, got.segment_length, got.end_of_segment) == (2000, 1000 + len(raw), False)
    assert [bytes(p) for p in got.payload] == [raw[1000:701_000]]


@pytest.mark.parametrize(
    "changes",
    [
        {"frames": [b"not zstd at all"]},
        {"frames": []},
        {"raw_bytes": 0},
        {"raw_bytes": 5 * 1024 * 1024},  # beyond READ_BYTES_MAX
        {"raw_bytes": 1_048_000},  # more than the frames hold
        {"skip": 2 * 1024 * 1024},  # beyond ZSTD_FRAME_RAW_MAX
        {"segment_length": 1500},  # the reply ends past the segment
    ],
)
def test_a_bad_zstd_read_reply_is_an_invalid_message(changes) -> None:
    raw = bytes(range(256)) * 4096
    body = _zstd_reply(raw, 256 * 1024, 1000, 300_000)._replace(**changes)
    with pytest.raises(InvalidMessage):
        codec.decode(codec.encode(body, 7))


def test_a_corrupt_zstd_frame_is_an_invalid_message() -> None:
    raw = bytes(range(256)) * 4096
    body = _zstd_reply(raw, 256 * 1024, 0, 300_000)
    bad = bytearray(body.frames[1])
    bad[len(bad) // 2] ^= 0xFF
    frames = codec.encode(body._replace(frames=[body.frames[0], bytes(bad)]), 7)
    with pytest.raises(InvalidMessage):
        codec.decode(frames)
    # frames that hold far more than the reply carries: refused before decompressing
    many = codec.encode(body._replace(raw_bytes=1000), 7)  # 2 frames for 1000 bytes
    with pytest.raises(InvalidMessage, match="hold"):
        codec.decode(many)
