"""InstanceRound: one worker's logs share the bookies' instance round while it is fresh."""

from __future__ import annotations

from streamvault.dataplane.log.bookie_instance import InstanceRound


def test_a_round_is_shared_while_fresh_and_for_the_same_bookies_only():
    now = [100.0]
    shared = InstanceRound(5.0, lambda: now[0])
    bookies = ["tcp://a", "tcp://b", "tcp://c"]
    assert shared.get(bookies) is None  # nothing asked yet
    shared.put(bookies, {"tcp://a": "x", "tcp://b": "y"})  # c did not answer
    now[0] += 4.9
    seen = shared.get(bookies)
    assert seen == {"tcp://a": "x", "tcp://b": "y"}
    seen["tcp://c"] = "z"  # a caller's copy: the shared round is unchanged
    assert shared.get(bookies) == {"tcp://a": "x", "tcp://b": "y"}
    assert shared.get(bookies[:2]) is None  # other bookies: ask them
    now[0] += 0.2
    assert shared.get(bookies) is None  # too old: ask again
