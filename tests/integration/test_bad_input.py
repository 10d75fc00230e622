"""Bad input gets its typed error (TESTING.md's table) and never disturbs a well-behaved
client served by the same worker at the same time."""

from __future__ import annotations

import os
import threading

import pytest
import zmq
from support.history import check_exactly_once, event, read_all, unique

from streamvault.client import StreamManager
from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    ConditionalCheckFailed,
    EventTooLarge,
    InvalidEventNumber,
    InvalidMessage,
    NoSuchScope,
    NoSuchSegment,
    NoSuchStream,
    SegmentSealed,
    StreamSealed,
    UnsupportedVersion,
    WrongHost,
    error_from_code,
)
from streamvault.client.protocol.limits import (
    EVENT_BYTES_MAX,
    INVALID_MESSAGES_BEFORE_DISCONNECT,
    PROTOCOL_VERSION,
)
from streamvault.client.protocol.naming import container_for


class RawPeer:
    """A hand-driven DEALER speaking (or abusing) the wire protocol."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.rid = 0

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames, copy=False)

    def request(self, body, payload_override=None) -> object:
        self.rid += 1
        frames = codec.encode(body, self.rid)
        if payload_override is not None:
            frames[1] = payload_override
        self.send(frames)
        return self.reply()

    def reply(self, timeout_ms: int = 10_000) -> object:
        assert self.sock.poll(timeout_ms), "no reply before the deadline"
        _, body = codec.decode(self.sock.recv_multipart())
        if isinstance(body, m.ErrorReply):
            return error_from_code(body.code, body.message, body.fields)
        return body

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def stream(shared_standalone):
    scope, name = unique("s"), unique("t")
    with StreamManager(shared_standalone.controller) as mgr:
        mgr.create_scope(scope)
        mgr.create_stream(scope, name, initial_segments=1)
        segment = mgr.get_stream_info(scope, name).segments[0].segment
        cmap = mgr._controller.container_map(refresh=True)
        endpoint = cmap.endpoints[container_for(segment, cmap.container_count)]
        yield mgr, scope, name, segment, endpoint


def _good_writer(mgr, scope: str, stream: str, count: int, errors: list) -> threading.Thread:
    def run() -> None:
        try:
            with mgr.create_writer(scope, stream) as writer:
                for i in range(count):
                    writer.write_event(event(0, i), routing_key="good")
        except Exception as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_each_bad_input_gets_its_typed_error_while_a_good_writer_is_served(stream):
    mgr, scope, name, segment, endpoint = stream
    good_stream = unique("good")
    mgr.create_stream(scope, good_stream, initial_segments=1)
    errors: list = []
    good = _good_writer(mgr, scope, good_stream, 20_000, errors)
    raw = RawPeer(endpoint)
    writer_id = os.urandom(16)
    seg = segment.encode()
    try:
        # an append before SetupAppend
        block = m.AppendBlock(writer_id, 0, 0, 1, -1, seg, b"\x01\x00\x00\x00x")
        assert isinstance(raw.request(block), InvalidMessage)
        # unknown segment
        # unknown segment (owned here) and a segment owned by another worker
        cmap = mgr._controller.container_map()
        names = [f"nope/nope/{i}" for i in range(200)]
        here = next(
            n for n in names if cmap.endpoints[container_for(n, cmap.container_count)] == endpoint
        )
        elsewhere = next(
            n for n in names if cmap.endpoints[container_for(n, cmap.container_count)] != endpoint
        )
        assert isinstance(raw.request(m.SetupAppend(writer_id, here.encode())), NoSuchSegment)
        assert isinstance(raw.request(m.SetupAppend(writer_id, elsewhere.encode())), WrongHost)
        setup = raw.request(m.SetupAppend(writer_id, seg))
        assert isinstance(setup, m.AppendSetup) and setup.last_event_number == -1
        # an event over the limit, checked on the block size
        big = b"\x00" * (EVENT_BYTES_MAX + 64)
        assert isinstance(
            raw.request(m.AppendBlock(writer_id, 0, 0, 1, -1, seg, big)), EventTooLarge
        )
        # event numbers that cannot hold the events in increasing order
        assert isinstance(
            raw.request(m.AppendBlock(writer_id, 5, 3, 1, -1, seg, b"\0" * 4)), InvalidEventNumber
        )
        ok = raw.request(m.AppendBlock(writer_id, 0, 9, 10, -1, seg, b"\0\0\0\0" * 10))
        assert isinstance(ok, m.DataAppended) and ok.last_event_number == 9 and not ok.duplicate
        dup = raw.request(m.AppendBlock(writer_id, 0, 9, 10, -1, seg, b"\0\0\0\0" * 10))
        assert isinstance(dup, m.DataAppended) and dup.duplicate
        assert isinstance(
            raw.request(m.AppendBlock(writer_id, 5, 14, 10, -1, seg, b"\0" * 40)),
            InvalidEventNumber,
        )
        # a conditional append with a stale offset
        stale = raw.request(m.AppendBlock(writer_id, 10, 10, 1, 3, seg, b"\0" * 4))
        assert isinstance(stale, ConditionalCheckFailed)
        assert stale.fields["current_offset"] == 40
        # garbage frames, an unknown type, truncated fields
        for frames in (
            [b"garbage"],
            [codec.encode_header(99, 7)],
            [codec.encode_header(m.MsgType.APPEND_BLOCK, 8) + b"\x01\x02", b"x"],
        ):
            raw.send(frames)
            assert isinstance(raw.reply(), InvalidMessage)
        # a header of an unsupported version
        raw.send([codec.encode_header(m.MsgType.HELLO, 9, version=PROTOCOL_VERSION + 7)])
        reply = raw.reply()
        assert isinstance(reply, UnsupportedVersion)
        assert reply.fields["max_version"] == PROTOCOL_VERSION
    finally:
        raw.close()
    good.join(timeout=120)
    assert not errors, errors
    got = read_all(mgr, scope, good_stream, total=20_000)
    check_exactly_once(got, {0: 20_000})


def test_hello_with_no_common_version_is_answered_with_the_range_then_ignored(stream):
    _, _, _, segment, endpoint = stream
    raw = RawPeer(endpoint)
    try:
        reply = raw.request(m.Hello(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5))
        assert isinstance(reply, UnsupportedVersion)
        assert (reply.fields["min_version"], reply.fields["max_version"]) == (1, PROTOCOL_VERSION)
        raw.rid += 1
        raw.send(codec.encode(m.SetupAppend(os.urandom(16), segment.encode()), raw.rid))
        assert not raw.sock.poll(500), "a peer with no common version must no longer be answered"
    finally:
        raw.close()


def test_a_peer_that_keeps_sending_garbage_is_cut_off_and_others_are_not(stream):
    mgr, scope, name, segment, endpoint = stream
    raw = RawPeer(endpoint)
    try:
        for _ in range(INVALID_MESSAGES_BEFORE_DISCONNECT):
            raw.send([b"\x01\xff" + b"\x00" * 18])  # version 1, no such message type
            assert isinstance(raw.reply(), InvalidMessage)
        raw.send([b"\x01\xff" + b"\x00" * 18])
        assert not raw.sock.poll(500)
    finally:
        raw.close()
    with mgr.create_writer(scope, name) as writer:
        writer.write_event(b"still served", routing_key="k").result(timeout=30)


def test_client_api_errors_are_typed(stream):
    mgr, scope, name, _, _ = stream
    with mgr.create_writer(scope, name) as writer:
        with pytest.raises(EventTooLarge):
            writer.write_event(b"x" * (EVENT_BYTES_MAX + 1))
        writer.write_event(b"fine").result(timeout=30)
    with pytest.raises(NoSuchStream):
        mgr.create_writer(scope, "no-such-stream")
    with pytest.raises(NoSuchScope):
        mgr.list_streams("no-such-scope")
    with pytest.raises(NoSuchScope):
        mgr.create_stream("no-such-scope", "x", initial_segments=1)
    from streamvault.client.protocol.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        mgr.create_stream(scope, "bad name!", initial_segments=1)
    with pytest.raises(InvalidArgument):
        mgr.create_stream(scope, "ok", initial_segments=0)


def test_append_to_a_sealed_stream_fails_with_segment_sealed(stream):
    mgr, scope, name, segment, endpoint = stream
    writer = mgr.create_writer(scope, name)
    writer.write_event(b"before seal", routing_key="k").result(timeout=30)
    assert mgr.seal_stream(scope, name)
    assert not mgr.seal_stream(scope, name)
    future = writer.write_event(b"after seal", routing_key="k")
    with pytest.raises(SegmentSealed):
        future.result(timeout=30)
    with pytest.raises(SegmentSealed):
        writer.write_event(b"again", routing_key="k")
    writer.close(timeout=0)
    with pytest.raises(StreamSealed):
        mgr.create_writer(scope, name)
    raw = RawPeer(endpoint)
    try:
        assert isinstance(
            raw.request(m.SetupAppend(os.urandom(16), segment.encode())), SegmentSealed
        )
    finally:
        raw.close()
    assert mgr.delete_stream(scope, name)
    assert name not in mgr.list_streams(scope)
