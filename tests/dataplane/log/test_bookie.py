"""The bookie process: entries are durable when acknowledged and survive SIGKILL; payloads
are CRC-checked before they are stored; a fenced ledger rejects the old owner's adds (and a
recovery read fences); deleted ledgers are gone; garbage gets typed errors while a good
client is served."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import crc32c
import pytest
import zmq
from support.bookies import BookieProcess

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    DataCorruption,
    Fenced,
    InvalidMessage,
    NoSuchLedger,
)
from streamvault.dataplane.log.bookie_client import BookieClient
from streamvault.dataplane.log.metadata import LEDGER_ID_SHIFT

TIMEOUT_S = 10.0


@pytest.fixture
def bookie(tmp_path: Path):
    proc = BookieProcess(tmp_path / "bookie").start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
def client():
    ctx = zmq.Context()
    client = BookieClient(ctx)
    try:
        yield client
    finally:
        client.close()
        ctx.term()


def add(ledger: int, entry: int, payload: bytes, *, epoch: int = 1, lac: int | None = None):
    lac = entry - 1 if lac is None else lac
    return m.AddEntry(ledger, entry, epoch, lac, crc32c.crc32c(payload), payload)


def read(client: BookieClient, endpoint: str, ledger: int, entry: int, **kw) -> m.EntryRead:
    msg = m.ReadEntry(ledger, entry, kw.get("epoch", 0), kw.get("fence", False))
    reply = client.call(endpoint, msg, TIMEOUT_S)
    assert isinstance(reply, m.EntryRead)
    return reply


def test_acknowledged_entries_survive_sigkill_and_read_back(bookie, client):
    payloads = {(ledger, e): os.urandom(100 + 977 * e) for ledger in (7, 9) for e in range(20)}
    for (ledger, entry), payload in payloads.items():
        reply = client.call(bookie.endpoint, add(ledger, entry, payload), TIMEOUT_S)
        assert reply == m.EntryAdded(ledger, entry)
    bookie.kill()
    bookie.start()
    client.close()
    for (ledger, entry), payload in payloads.items():
        got = read(client, bookie.endpoint, ledger, entry)
        assert got.found and bytes(got.payload) == payload
        assert got.last_entry_id == 19 and got.lac == 18 and not got.fenced
    missing = read(client, bookie.endpoint, 7, 20)
    assert not missing.found and bytes(missing.payload) == b""


def test_payload_crc_is_checked_before_the_entry_is_stored(bookie, client):
    bad = add(3, 0, b"hello")._replace(crc=crc32c.crc32c(b"hellp"))
    with pytest.raises(DataCorruption, match="CRC"):
        client.call(bookie.endpoint, bad, TIMEOUT_S)
    assert not read(client, bookie.endpoint, 3, 0).found


def test_recovery_read_fences_the_old_owner_durably(bookie, client):
    client.call(bookie.endpoint, add(5, 0, b"a", epoch=1), TIMEOUT_S)
    state = read(client, bookie.endpoint, 5, m.NO_ENTRY, epoch=2, fence=True)
    assert state.fenced and state.last_entry_id == 0 and not state.found
    with pytest.raises(Fenced):
        client.call(bookie.endpoint, add(5, 1, b"late", epoch=1), TIMEOUT_S)
    bookie.kill()
    bookie.start()
    client.close()
    with pytest.raises(Fenced):
        client.call(bookie.endpoint, add(5, 1, b"late", epoch=1), TIMEOUT_S)
    # the recoverer itself may re-replicate into the fenced ledger at its epoch
    assert client.call(bookie.endpoint, add(5, 1, b"again", epoch=2), TIMEOUT_S)
    # a lower fence (a recoverer that lost) is refused and never lowers the fence epoch
    with pytest.raises(Fenced):
        read(client, bookie.endpoint, 5, m.NO_ENTRY, epoch=1, fence=True)
    with pytest.raises(Fenced):
        client.call(bookie.endpoint, add(5, 2, b"x", epoch=1), TIMEOUT_S)
    assert bytes(read(client, bookie.endpoint, 5, 1).payload) == b"again"


def test_a_fence_holds_for_every_ledger_of_its_container_after_deletion(bookie, client):
    """An old owner that wakes up after its fenced ledger was deleted (and its journal file
    removed) must not get adds acknowledged in any ledger of that container."""
    container = 7 << LEDGER_ID_SHIFT
    client.call(bookie.endpoint, add(container | 1, 0, b"a", epoch=1), TIMEOUT_S)
    read(client, bookie.endpoint, container | 1, m.NO_ENTRY, epoch=2, fence=True)
    assert client.call(bookie.endpoint, m.DeleteLedger(container | 1), TIMEOUT_S) == m.Done()
    with pytest.raises(NoSuchLedger):
        client.call(bookie.endpoint, add(container | 1, 1, b"late", epoch=1), TIMEOUT_S)
    bookie.kill()
    bookie.start()
    client.close()
    with pytest.raises(NoSuchLedger):  # its delete marker is still in the journal
        client.call(bookie.endpoint, add(container | 1, 1, b"late", epoch=1), TIMEOUT_S)
    with pytest.raises(Fenced):  # a ledger of the fenced container the bookie never held
        client.call(bookie.endpoint, add(container | 2, 1, b"late", epoch=1), TIMEOUT_S)
    assert client.call(bookie.endpoint, add(container | 2, 0, b"new", epoch=2), TIMEOUT_S)
    other = 8 << LEDGER_ID_SHIFT | 1  # another container's log is not fenced
    assert client.call(bookie.endpoint, add(other, 0, b"b", epoch=1), TIMEOUT_S)


def test_deleted_ledger_is_gone_after_restart(bookie, client):
    for entry in range(3):
        client.call(bookie.endpoint, add(11, entry, b"x" * 5000), TIMEOUT_S)
    assert client.call(bookie.endpoint, m.DeleteLedger(11), TIMEOUT_S) == m.Done()
    bookie.kill()
    bookie.start()
    client.close()
    got = read(client, bookie.endpoint, 11, 0)
    assert not got.found and got.last_entry_id == -1


def test_garbage_gets_typed_errors_and_a_good_client_is_still_served(bookie, client):
    ctx = zmq.Context()
    bad = ctx.socket(zmq.DEALER)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(bookie.endpoint)
    try:
        head = codec.encode_header(m.MsgType.ADD_ENTRY, 42)
        for frames in ([b"\x00garbage"], [head + b"short", b"x"], [head]):
            bad.send_multipart(frames)
            assert bad.poll(int(TIMEOUT_S * 1000)), "no answer to a malformed message"
            _, body = codec.decode(bad.recv_multipart())
            assert isinstance(body, m.ErrorReply) and body.code == InvalidMessage.code
            assert client.call(bookie.endpoint, add(1, 0, b"ok"), TIMEOUT_S) == m.EntryAdded(1, 0)
    finally:
        bad.close(0)
        ctx.term()


def test_many_concurrent_adds_share_fsyncs(bookie, client):
    """Group commit: adds from several clients in flight together are made durable by fewer
    fdatasyncs than adds (the bookie's own counters, from GetStatus)."""
    before = client.call(bookie.endpoint, m.GetStatus(), TIMEOUT_S).processes[0].info
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.DEALER) for _ in range(4)]
    try:
        for sock in socks:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(bookie.endpoint)
        sent = 0
        for entry in range(200):
            for ledger, sock in enumerate(socks):
                sock.send_multipart(codec.encode(add(ledger, entry, b"e" * 200), sent))
                sent += 1
        acked = 0
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        while acked < sent:
            events = poller.poll(int(TIMEOUT_S * 1000))
            assert events, f"only {acked} of {sent} adds acknowledged"
            for sock, _ in events:
                while sock.poll(0):
                    _, body = codec.decode(sock.recv_multipart())
                    assert isinstance(body, m.EntryAdded), body
                    acked += 1
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    after = client.call(bookie.endpoint, m.GetStatus(), TIMEOUT_S).processes[0].info
    adds = after["adds"] - before["adds"]
    syncs = after["syncs"] - before["syncs"]
    assert adds == sent
    assert 0 < syncs < adds, (syncs, adds)
    assert all(read(client, bookie.endpoint, ledger, 199).found for ledger in range(4))


def _instance(client: BookieClient, endpoint: str) -> str:
    reply = client.call(endpoint, m.Hello(1, 1, "test"), TIMEOUT_S)
    assert isinstance(reply, m.HelloReply) and reply.role == "bookie"
    return reply.instance


def test_the_instance_outlives_restarts_and_not_the_data(bookie, client, tmp_path):
    """A bookie's instance names its data dir's lifetime: the same after SIGKILL and
    restart, new once the data dir is wiped (the disk replaced), and a damaged instance
    file keeps the bookie from starting (bookie_instance.py)."""
    first = _instance(client, bookie.endpoint)
    assert len(first) == 32
    bookie.kill()
    bookie.start()
    client.close()
    assert _instance(client, bookie.endpoint) == first
    bookie.kill()
    shutil.rmtree(tmp_path / "bookie")
    bookie.start()
    client.close()
    second = _instance(client, bookie.endpoint)
    assert len(second) == 32 and second != first
    bookie.kill()
    (tmp_path / "bookie" / "instance").write_text(second[:-1] + "x 00000000\n")
    with pytest.raises(AssertionError, match="bookie exited 2"):
        bookie.start(timeout_s=10.0)
    assert "damaged" in bookie.logs()
