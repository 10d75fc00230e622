"""CatchUp without sockets: what it sends, when, for a lagging bookie."""

from __future__ import annotations

from typing import Any

from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m


class _Log:
    epoch = 3
    positions = {7: [0, 100, 200]}


class _World:
    def __init__(self) -> None:
        self.now = 0.0
        self.sent: list[tuple[str, Any, int]] = []

    def send(self, endpoint: str, frames: list[Any]) -> bool:
        header, body = codec.decode(frames)
        self.sent.append((endpoint, body, header.request_id))
        return True


def _catchup(world: _World, grace_s: float = 0.0):
    from streamvault.dataplane.log.catchup import CatchUp

    return CatchUp(world.send, timeout_s=1.0, grace_s=grace_s, clock=lambda: world.now)


def test_a_bookie_that_gets_no_new_entries_is_probed_then_caught_up() -> None:
    world = _World()
    catchup = _catchup(world)
    for entry in range(3):
        catchup.missed("left-out", _Log(), (7, entry), ["a"])
    catchup.tick()  # it acknowledged nothing since: one probing copy (read from "a" first)
    assert [(e, type(b).__name__) for e, b, _ in world.sent] == [("a", "ReadEntry")]
    assert catchup.counters["catchup_probes"] == 1
    catchup.tick()  # one probe per timeout, not per tick
    assert len(world.sent) == 1
    _, read, rid = world.sent.pop()
    catchup.on_reply(rid, m.EntryRead(7, read.entry_id, 2, 1, False, True, b"payload"))
    target, add, rid = world.sent.pop()
    assert target == "left-out" and isinstance(add, m.AddEntry) and add.epoch == 3
    assert bytes(add.payload) == b"payload"
    catchup.on_reply(rid, m.EntryAdded(7, add.entry_id))  # it answers: copy the rest
    catchup.tick()
    reads = [body.entry_id for _, body, _ in world.sent if isinstance(body, m.ReadEntry)]
    assert sorted(reads) == sorted({0, 1, 2} - {add.entry_id})


def test_an_unanswered_probe_is_sent_again_after_the_timeout() -> None:
    world = _World()
    catchup = _catchup(world)
    catchup.missed("down", _Log(), (7, 0), ["a"])
    catchup.tick()
    world.sent.clear()
    world.now = 0.5
    catchup.tick()
    assert not world.sent
    world.now = 1.01
    catchup.tick()
    assert [body.entry_id for _, body, _ in world.sent] == [0]
    assert catchup.counters["catchup_probes"] == 2


def test_no_such_ledger_drops_the_entry() -> None:
    world = _World()
    catchup = _catchup(world)
    catchup.missed("t", _Log(), (7, 1), ["a"])
    catchup.tick()
    _, _, rid = world.sent.pop()
    catchup.on_reply(rid, m.EntryRead(7, 1, 2, 1, False, True, b"x"))
    _, _, rid = world.sent.pop()
    catchup.on_reply(rid, m.ErrorReply(414, "ledger 7 is deleted", {}))
    world.now = 5.0
    catchup.tick()
    assert not world.sent and catchup.counters["catchup_lagging"] == 0


def test_a_late_ack_within_the_grace_makes_no_copy() -> None:
    """The slowest bookie of a healthy ensemble misses entries by a moment: its own add
    lands soon after the quorum's, and nothing is read or written again for it."""
    world = _World()
    catchup = _catchup(world, grace_s=0.5)
    for entry in range(3):
        catchup.missed("slow", _Log(), (7, entry), ["a", "b"])
    catchup.tick()
    world.now = 0.2
    for entry in range(2):
        catchup.acked("slow", (7, entry))
    catchup.tick()  # it answers again, but the entry it still lacks was missed 0.2 s ago
    assert not world.sent
    world.now = 0.6  # now that one is overdue: copied
    catchup.tick()
    assert [(type(b).__name__, b.entry_id) for _, b, _ in world.sent] == [("ReadEntry", 2)]
    _, _, rid = world.sent.pop()
    catchup.on_reply(rid, m.EntryRead(7, 2, 2, 1, False, True, b"x"))
    _, add, rid = world.sent.pop()
    catchup.on_reply(rid, m.EntryAdded(7, add.entry_id))
    assert catchup.counters["catchup_late_acks"] == 2
    assert catchup.counters["catchup_copied"] == 1
    catchup.tick()
    assert not world.sent and catchup.counters["catchup_lagging"] == 0


def test_only_the_entries_past_the_grace_are_copied() -> None:
    world = _World()
    catchup = _catchup(world, grace_s=0.5)
    catchup.missed("t", _Log(), (7, 0), ["a"])
    world.now = 0.4
    catchup.missed("t", _Log(), (7, 1), ["a"])
    catchup.acked("t", (7, 99))  # it answers (an entry it had in time)
    world.now = 0.6
    catchup.tick()
    assert [b.entry_id for _, b, _ in world.sent] == [0]
    world.now = 0.95
    catchup.tick()
    assert [b.entry_id for _, b, _ in world.sent] == [0, 1]
