"""Events that say who wrote them, and the checker for "every event exactly once, in order
per routing key" (the lost / duplicate / reorder / phantom checks of TESTING.md)."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable


def unique(prefix: str) -> str:
    return f"{prefix}{os.urandom(4).hex()}"


def event(key: int, seq: int, size: int = 100) -> bytes:
    head = b"%d|%d|" % (key, seq)
    return head + b"." * max(0, size - len(head))


def parse(data: bytes) -> tuple[int, int]:
    key, seq, _ = data.split(b"|", 2)
    return int(key), int(seq)


def expected_counts(total: int, keys: int) -> dict[int, int]:
    """Events per key when event i goes to key i % keys."""
    return {k: total // keys + (1 if k < total % keys else 0) for k in range(keys)}


def check_exactly_once(events: Iterable[bytes], expected: dict[int, int]) -> None:
    """Each key k must appear with sequences 0..expected[k]-1, once each, in order."""
    seen: dict[int, list[int]] = defaultdict(list)
    for data in events:
        key, seq = parse(data)
        seen[key].append(seq)
    phantom = sorted(set(seen) - set(expected))
    assert not phantom, f"phantom keys {phantom[:10]}"
    problems = []
    for key, count in expected.items():
        got = seen.get(key, [])
        if got != list(range(count)):
            missing = sorted(set(range(count)) - set(got))
            dups = len(got) - len(set(got))
            reordered = any(a >= b for a, b in zip(got, got[1:], strict=False))
            problems.append(
                f"key {key}: {len(got)}/{count} events, missing={missing[:5]} "
                f"(+{max(0, len(missing) - 5)}), duplicates={dups}, "
                f"reordered={reordered}"
            )
    assert not problems, "\n".join(problems[:20])


def read_all(
    manager,
    scope: str,
    stream: str,
    *,
    total: int,
    readers: int = 2,
    deadline_s: float = 120.0,
    group: str | None = None,
) -> list[bytes]:
    """Read `total` events through a new reader group of `readers` readers (in threads)."""
    group = group or unique("g")
    manager.create_reader_group(scope, group, [stream])
    members = [manager.create_reader(scope, group, f"r{i}") for i in range(readers)]
    results: list[list[bytes]] = [[] for _ in members]
    counts = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def run(index: int) -> None:
        reader = members[index]
        while time.monotonic() < stop_at:
            with lock:
                if counts[0] >= total:
                    return
            ev = reader.read_next_event(0.5)
            if ev is not None:
                results[index].append(ev.data)
                with lock:
                    counts[0] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # drain: anything beyond `total` is a duplicate or phantom and must fail the check
    for index, reader in enumerate(members):
        while (ev := reader.read_next_event(0.3)) is not None:
            results[index].append(ev.data)
        reader.close()
    return [data for part in results for data in part]


def write_in_background(
    writer, futures: list, total: int, done: threading.Event, *, keys: int, pause_every: int = 2000
) -> threading.Thread:
    """Write `total` events over `keys` routing keys from a thread, appending each future;
    set `done` at the end. Writes are spread out (10 ms after every `pause_every` events) so
    that a fault lands mid-write."""

    def run() -> None:
        for i in range(total):
            futures.append(
                writer.write_event(event(i % keys, i // keys), routing_key=f"key-{i % keys}")
            )
            if i % pause_every == pause_every - 1:
                time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_acked(futures: list, count: int, timeout_s: float = 60.0) -> None:
    """Wait (bounded) until the first `count` futures are done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for f in futures[:count] if f.done()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} events acknowledged in {timeout_s}s")
