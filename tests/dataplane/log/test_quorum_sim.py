"""Deterministic simulation of the replicated log's protocol (TESTING.md §2; fault table rows
1, 3, 6, 7, 9, 10, 11, 12, 13, 14, 19 in simulated form).

Each seed builds a world (support/quorum_sim.py) of 3 or 4 bookies on FaultyDisks and one
container's log with a random quorum (E=Qw=3 Qa=2, E=Qw=3 Qa=3, E=Qw=2 Qa=1) and small
ledgers (rollover every few entries), and drives the production protocol code through a
random schedule: owners writing; bookies crashing (also in the middle of a commit), failing
an fdatasync (fail-stop) and restarting; links cut and healed; messages lost and delayed;
slow bookies (ensemble changes, catch-up); takeovers by a new owner while the old one goes on
writing (a zombie), is paused and resumes (SIGSTOP/SIGCONT), or stops; two recoverers
racing. Then everything heals, the latest owner must get new writes acknowledged within a
bounded time, and a last owner recovers the log. The history is checked:

(a) no loss: every record any owner had acknowledged is in the log of every recovery at a
    higher epoch (so also in the last one);
(b) no phantom: every record in a recovered log was submitted, byte-identical;
(c) no duplicate: a record is in a recovered log at most once;
(d) order: a recovered log is the records of owners in epoch order, each owner's records
    in submission order without gaps (an owner's acknowledgements come in that order too);
(e) a decided log stays decided: each successful recovery's log extends the one before it
    (so an old owner's writes that the new owner did not recover are never visible);
(f) an owner stops only because a newer owner fenced it (Fenced, or a failed CAS);
(g) liveness: once healed, writes are acknowledged and recovery succeeds.

A failing seed prints `quorum sim failed: seed=S (replay: ...)` with the run's event log;
`--sim-seeds N` runs more seeds, `--sim-seed S` replays one (tests/conftest.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from support.quorum_sim import SimBookie, SimClient, SimStore, World
from support.sim_seeds import quiet, run_seeds

from streamvault.client.protocol import codec
from streamvault.client.protocol.errors import Fenced, ServiceUnavailable, StreamVaultError
from streamvault.dataplane.log.local_log import LogConfig
from streamvault.dataplane.log.replicated_log import ReplicatedLog, ReplicationConfig
from streamvault.dataplane.log.replicator import ReplicatorCore

KEY = "container-0001"
CHAOS_S = 1.0
"""Simulated seconds of faults; then everything heals."""
TICK_S = 0.001
FINAL_RECORDS = 5
LIVENESS_S = 5.0
"""After healing: the most simulated time new writes may take to be acknowledged."""
RECOVERY_ATTEMPTS = 20
NESTED_RECOVERIES_MAX = 2
QUORUMS = ((3, 3, 2), (4, 3, 2), (4, 3, 3), (3, 2, 1), (4, 3, 2))
"""(bookies, ensemble = write quorum, ack quorum)."""


class SimFailure(AssertionError):
    pass


class Owner:
    """A container owner: the real ReplicatedLog and ReplicatorCore on the simulated world."""

    def __init__(self, run: Run, number: int) -> None:
        self.run = run
        self.world = world = run.world
        self.number = number
        self.name = f"owner{number}"
        self.up = True
        self.incarnation = 1
        world.net.nodes[self.name] = self
        self.inbox: list[tuple[str, Any, Any]] = []
        self.core = ReplicatorCore(run.replication, self._deliver, self._send, clock=world.clock)
        self._clients = 0
        self.log = ReplicatedLog(
            key=KEY,
            container_id=1,
            store=run.store,
            replicator=self.core,
            replication=run.replication,
            ctx=None,
            config=run.log_config,
            client_factory=self._client,
            clock=world.clock,
        )
        self.state = "new"  # recovering, writing, paused, stopped, failed
        self.truncated_at_commit = 0
        collect = self.log._collect_orphans

        def after_recovery_commit() -> None:
            # recovery's metadata is written: what it read is the log as of this point (a
            # newer owner may truncate while the orphans are collected, the world running)
            self.truncated_at_commit = run.truncated_below
            collect()

        self.log._collect_orphans = after_recovery_commit  # type: ignore[method-assign]
        self.epoch = -1
        self.next_seq = 0
        self.acked: list[int] = []
        self.truncations: list[int] = []
        self.stop_reason: BaseException | None = None

    def _client(self) -> SimClient:
        self._clients += 1
        return SimClient(self.world, f"{self.name}/c{self._clients}")

    def _send(self, endpoint: str, frames: list[Any]) -> bool:
        return self.world.net.send(self.name, endpoint, frames)

    def receive(self, src: str, frames: list[bytes]) -> None:
        header, body = codec.decode(frames)
        self.inbox.append((src, header, body))

    # --- life ------------------------------------------------------------------------
    def recover_and_start(self) -> bool:
        run = self.run
        if run.nested >= NESTED_RECOVERIES_MAX:
            self.state = "failed"
            return False
        self.state = "recovering"
        self.world.note(f"{self.name}: recovery starts")
        run.nested += 1
        try:
            records = [(loc.ledger_id, bytes(payload)) for loc, payload in self.log.recover()]
        except (ServiceUnavailable, Fenced) as exc:
            self.world.note(f"{self.name}: recovery failed: {type(exc).__name__}: {exc}")
            run.stats["recoveries_failed"] += 1
            self.state = "failed"
            return False
        finally:
            run.nested -= 1
        self.epoch = self.log.epoch
        run.truncated_at[self.epoch] = self.truncated_at_commit
        run.recoveries.append((self.epoch, self.number, records))
        run.epoch_of[self.number] = self.epoch
        run.stats["recoveries"] += 1
        self.world.note(f"{self.name}: recovered epoch={self.epoch} records={len(records)}")
        try:
            self.log.start()
        except Fenced as exc:
            self.world.note(f"{self.name}: start fenced: {exc}")
            self.state = "failed"
            return False
        self.state = "writing"
        self.world.at(TICK_S, self._tick)
        return True

    def _tick(self) -> None:
        if self.state not in ("writing", "paused"):
            return
        self.world.at(TICK_S, self._tick)
        if self.state == "paused":
            return
        run = self.run
        rng = self.world.rng
        if run.writing and rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                self.submit()
        if run.truncating and rng.random() < 0.01:
            self.truncate()
        inbox, self.inbox = self.inbox, []
        try:
            self.core.turn(inbox)
        except StreamVaultError as exc:
            self.stop(exc)

    def submit(self) -> bool:
        rng = self.world.rng
        prefix = b"%d:%d:" % (self.number, self.next_seq)
        size = rng.choice((0, 10, 100, 1000, rng.randint(0, 3000)))
        payload = prefix + rng.randbytes(size)
        buffer = self.log.acquire_buffer(len(payload))
        if buffer is None:
            return False
        buffer.payload[: len(payload)] = payload
        self.log.submit(buffer, len(payload), ("record", self.next_seq))
        self.run.submitted[(self.number, self.next_seq)] = payload
        self.next_seq += 1
        return True

    def truncate(self) -> None:
        """Ask to delete the log's ledgers below a random closed one (as a checkpoint that
        reached LTS would)."""
        closed = [i.ledger_id for i in self.log.meta.ledgers if i.state == "closed"]
        if closed:
            below = self.world.rng.choice(closed)
            self.world.note(f"{self.name}: truncate below ledger {below}")
            self.log.truncate_before(below)
            self.truncations.append(below)

    def _deliver(self, done: list[Any]) -> None:
        for log_, buffer, token, location in done:
            if buffer is not None:
                log_.release(buffer)
            if token[0] == "task":  # a truncation: its metadata is written, deletes sent
                below = self.truncations.pop(0)
                self.run.truncated_below = max(self.run.truncated_below, below)
                log_.forget_ledgers(token[1])
                continue
            self.run.ledger_of[(self.number, token[1])] = location.ledger_id
            seq = token[1]
            expected = self.acked[-1] + 1 if self.acked else 0
            if seq != expected:
                raise SimFailure(f"{self.name}: acknowledged seq {seq}, expected {expected}")
            self.acked.append(seq)
            self.run.stats["acked"] += 1

    def stop(self, exc: BaseException) -> None:
        self.world.note(f"{self.name}: stops: {type(exc).__name__}: {exc}")
        self.state = "stopped"
        self.stop_reason = exc
        self.up = False
        latest = self.run.store.get(KEY)[0]
        if not isinstance(exc, Fenced) or latest is None or latest.epoch <= self.epoch:
            raise SimFailure(f"{self.name} (epoch {self.epoch}) stopped without a newer owner: "
                             f"{type(exc).__name__}: {exc}")  # fmt: skip
        self.run.stats["owners_fenced"] += 1


class Run:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.world = world = World(seed)
        rng = world.rng
        count, ensemble, ack = rng.choice(QUORUMS)
        self.bookies = [SimBookie(world, f"b{i}", str(i)) for i in range(count)]
        self.replication = ReplicationConfig(
            bookies={str(i): f"b{i}" for i in range(count)},
            ensemble=ensemble,
            write_quorum=ensemble,
            ack_quorum=ack,
            add_timeout_s=0.02,
            recovery_timeout_s=0.05,
            bookie_failed_s=0.1,
            exclusion_s=0.4,
            read_window=8,
        )
        self.log_config = LogConfig(
            ledger_bytes=rng.choice((8192, 16384, 65536)),
            frame_payload_bytes=4096,
            buffers=rng.choice((1, 4, 8)),
        )
        world.net.drop = rng.choice((0.0, 0.0, 0.002, 0.01, 0.05))
        world.net.spike = rng.choice((0.0, 0.01, 0.1))
        self.store = SimStore()
        self.owners: list[Owner] = []
        self.recoveries: list[tuple[int, int, list[tuple[int, bytes]]]] = []
        """(epoch, owner, [(ledger id, record)]) of each successful recovery."""
        self.truncated_below = 0
        """Ledgers below this were truncated (metadata written): they may be gone."""
        self.truncated_at: dict[int, int] = {}
        """Epoch of a recovery -> the truncation point when it wrote its metadata."""
        self.ledger_of: dict[tuple[int, int], int] = {}
        """Acknowledged record -> its ledger."""
        self.epoch_of: dict[int, int] = {}
        self.submitted: dict[tuple[int, int], bytes] = {}
        self.writing = True
        self.truncating = rng.random() < 0.5
        self.chaos = True
        self.nested = 0
        self.stats: Counter[str] = Counter()
        world.note(
            f"seed={seed} bookies={count} E=Qw={ensemble} Qa={ack} "
            f"ledger_bytes={self.log_config.ledger_bytes} buffers={self.log_config.buffers} "
            f"drop={world.net.drop} spike={world.net.spike}"
        )

    def steps(self) -> list[str]:
        return self.world.log[-400:]

    def new_owner(self) -> Owner:
        owner = Owner(self, len(self.owners) + 1)
        self.owners.append(owner)
        return owner

    # --- the schedule ----------------------------------------------------------------
    def run(self) -> None:
        world, rng = self.world, self.world.rng
        for bookie in self.bookies:
            while not bookie.start():
                pass
        first = self.new_owner()
        world.at(0.0, first.recover_and_start)
        for _ in range(rng.randint(2, 12)):
            world.at(rng.uniform(0.0, CHAOS_S), self._fault)
        world.run_until(lambda: False, CHAOS_S)
        self._heal()
        self._final()
        self.check()

    def _fault(self) -> None:
        world, rng = self.world, self.world.rng
        kind = rng.choice(
            ("crash", "crash", "crash_in_commit", "io_error", "cut", "cut", "isolate", "partition",
             "slow", "takeover", "takeover", "race", "wipe")
        )  # fmt: skip
        if kind == "wipe" and (self.replication.ack_quorum < 2 or self.stats["fault_wipe"]):
            kind = "crash"  # one lost copy per run, and only where an entry has another
        self.stats[f"fault_{kind}"] += 1
        bookie = rng.choice(self.bookies)
        duration = rng.choice((0.005, 0.05, 0.2, 0.5))
        if kind == "crash":
            bookie.crash()
            world.at(duration, lambda: self._restart(bookie))
        elif kind == "crash_in_commit":
            bookie.arm_crash(rng.randint(1, 6))
            world.at(duration, lambda: self._restart(bookie))
        elif kind == "wipe":
            bookie.wipe()
            world.at(duration, lambda: self._restart(bookie))
        elif kind == "io_error":
            bookie.fail_next_sync()
            world.at(duration, lambda: self._restart(bookie))
        elif kind in ("cut", "isolate", "partition"):
            cut = [bookie]
            if kind == "partition":  # some bookies apart from every owner there is or will be
                cut = rng.sample(self.bookies, rng.randint(1, len(self.bookies) - 1))
                peers = [f"owner{n}" for n in range(1, len(self.owners) + 4)]
                peers += [f"{p}/c{i}" for p in list(peers) for i in range(1, 40)]
            elif kind == "isolate":
                peers = [o.name for o in self.owners]
            else:
                peers = [self._writer_name()]
            links = {frozenset((b.name, p)) for b in cut for p in peers}
            world.note(
                f"{kind}: {[b.name for b in cut]} from "
                f"{sorted({p.split('/')[0] for p in peers})} for {duration}s"
            )
            world.net.cut |= links
            world.at(duration, lambda: world.net.cut.difference_update(links))
        elif kind == "slow":
            world.note(f"{bookie.name}: slow for {duration}s")
            bookie.slow = True
            world.at(duration, lambda: setattr(bookie, "slow", False))
        elif kind == "takeover":
            self._takeover(rng.choice(("zombie", "pause", "stop")), duration)
        elif kind == "race":  # both start before either finishes
            world.at(0.0, lambda: self._takeover("zombie", duration))
            world.at(rng.uniform(0.0, 0.003), lambda: self._takeover("zombie", duration))

    def _writer_name(self) -> str:
        writing = [o for o in self.owners if o.state in ("writing", "paused")]
        return writing[-1].name if writing else self.owners[-1].name

    def _takeover(self, old: str, duration: float) -> None:
        world = self.world
        if not self.chaos:  # a takeover due after healing (its recovery ran long): none
            return
        for owner in self.owners:
            if owner.state == "writing" and old == "pause":
                world.note(f"{owner.name}: paused for {duration}s (SIGSTOP)")
                owner.state = "paused"
                world.at(duration, lambda o=owner: self._resume(o))
            elif owner.state in ("writing", "paused") and old == "stop":
                world.note(f"{owner.name}: stopped (crash)")
                owner.state = "stopped"
                owner.up = False
        self.new_owner().recover_and_start()

    def _resume(self, owner: Owner) -> None:
        if owner.state == "paused":
            self.world.note(f"{owner.name}: resumes (SIGCONT)")
            owner.state = "writing"

    def _restart(self, bookie: SimBookie) -> None:
        if bookie.up:  # an armed fault never fired: disarm it
            bookie.disk.clear_faults()
            return
        if bookie.start():
            bookie.counters["restarts"] += 1
            self.world.note(f"{bookie.name}: restarted")
        else:
            self.world.at(0.001, lambda: self._restart(bookie))

    def _heal(self) -> None:
        world = self.world
        world.note("heal: bookies up, links whole, no loss, no slow bookie")
        self.chaos = False
        world.net.cut.clear()
        world.net.drop = 0.0
        world.net.spike = 0.0
        for bookie in self.bookies:
            bookie.slow = False
            if bookie.up:
                bookie.disk.clear_faults()
            while not bookie.up:
                bookie.start()

    def _final(self) -> None:
        world = self.world
        self.writing = self.truncating = False
        meta = self.store.get(KEY)[0]
        latest = meta.epoch if meta is not None else -1  # an owner at an older one is fenced
        writer = next(
            (o for o in self.owners if o.epoch == latest and o.state in ("writing", "paused")),
            None,
        )
        if writer is not None and writer.state == "paused":
            self._resume(writer)
        for _ in range(RECOVERY_ATTEMPTS):
            if writer is not None and writer.state == "writing":
                break
            writer = self.new_owner()
            if not writer.recover_and_start():
                world.run_until(lambda: False, world.now + 0.05)
        else:
            raise SimFailure(f"no owner could recover in {RECOVERY_ATTEMPTS} attempts once healed")
        assert writer is not None
        wanted = writer.next_seq + FINAL_RECORDS
        deadline = world.now + LIVENESS_S
        while writer.next_seq < wanted and world.now < deadline:
            if not writer.submit():
                world.run_until(lambda: False, world.now + TICK_S)
        self.final_records = [(writer.number, s) for s in range(wanted - FINAL_RECORDS, wanted)]
        if (
            not world.run_until(
                lambda: len(writer.acked) == writer.next_seq or writer.state != "writing", deadline
            )
            or writer.state != "writing"
        ):
            raise SimFailure(
                f"liveness: {writer.name} has {len(writer.acked)} of {writer.next_seq} records "
                f"acknowledged {LIVENESS_S}s after healing (state {writer.state})"
            )
        checker = None
        for _ in range(RECOVERY_ATTEMPTS):
            checker = self.new_owner()
            if checker.recover_and_start():
                break
            world.run_until(lambda: False, world.now + 0.05)
        else:
            raise SimFailure("the last recovery never succeeded once healed")
        for owner in self.owners[:-1]:  # the old owners are gone by now (killed, or fenced)
            owner.state, owner.up = "stopped", False

    # --- the history -----------------------------------------------------------------
    def check(self) -> None:
        acked = {(o.number, s) for o in self.owners for s in o.acked}
        logs = [(epoch, number, self._parse(epoch, records))
                for epoch, number, records in sorted(self.recoveries)]  # fmt: skip
        ledger_seen = dict(self.ledger_of)  # record -> ledger, as acknowledged or recovered
        for _, _, log_ in logs:
            ledger_seen.update((rec, ledger) for ledger, rec in log_)
        previous: list[tuple[int, tuple[int, int]]] = []
        previous_epoch = -1
        for epoch, number, log_ in logs:
            where = f"epoch {epoch} (owner{number})"
            if epoch == previous_epoch:
                raise SimFailure(f"two successful recoveries at epoch {epoch}")
            below = self.truncated_at[epoch]
            ids = [rec for _, rec in log_]
            if any(ledger < below for ledger, _ in log_):
                raise SimFailure(f"{where}: a ledger below the truncation point {below} is read")
            if len(set(ids)) != len(ids):
                dup = [i for i, n in Counter(ids).items() if n > 1]
                raise SimFailure(f"{where}: duplicate records {dup[:5]}")
            kept = [rec for ledger, rec in previous if ledger >= below]
            if ids[: len(kept)] != kept:
                raise SimFailure(
                    f"{where} does not extend the log recovered at epoch {previous_epoch}: "
                    f"first difference at {_first_difference(ids, kept)}"
                )
            owner_epochs = [self.epoch_of.get(owner, -1) for owner, _ in ids]
            if owner_epochs != sorted(owner_epochs) or any(e >= epoch for e in owner_epochs):
                raise SimFailure(f"{where}: records out of epoch order: {ids[:20]}")
            last: dict[int, int] = {}
            for owner, seq in ids:
                if owner in last and seq != last[owner] + 1:
                    raise SimFailure(f"{where}: owner{owner} seq {seq} after {last[owner]}")
                if (
                    owner not in last
                    and seq > 0
                    and ledger_seen.get((owner, seq - 1), below) >= below
                ):
                    raise SimFailure(f"{where}: owner{owner} starts at seq {seq}, its record "
                                     f"{seq - 1} was not truncated (below {below})")  # fmt: skip
                last[owner] = seq
            present = set(ids)
            lost = sorted(
                r
                for r in acked
                if self.epoch_of.get(r[0], -1) < epoch
                and self.ledger_of[r] >= below
                and r not in present
            )
            if lost:
                raise SimFailure(f"{where}: acknowledged records lost: {lost[:10]} ({len(lost)})")
            previous, previous_epoch = log_, epoch
        missing = [
            r
            for r in self.final_records
            if r not in {rec for _, rec in previous} and self.ledger_of[r] >= self.truncated_below
        ]
        if missing:
            raise SimFailure(
                f"the last recovery lacks the records written after healing: {missing}"
            )
        self._check_no_orphans()
        self._count()

    def _parse(
        self, epoch: int, records: list[tuple[int, bytes]]
    ) -> list[tuple[int, tuple[int, int]]]:
        out = []
        for ledger, payload in records:
            try:
                owner, seq = (int(x) for x in payload.split(b":", 2)[:2])
            except ValueError:
                raise SimFailure(f"epoch {epoch}: phantom record {payload[:40]!r}") from None
            if self.submitted.get((owner, seq)) != payload:
                raise SimFailure(f"epoch {epoch}: phantom or damaged record {owner}:{seq}")
            out.append((ledger, (owner, seq)))
        return out

    def _check_no_orphans(self) -> None:
        """The last recovery collected every ledger the metadata does not name."""
        meta = self.store.get(KEY)[0]
        assert meta is not None
        named = {i.ledger_id for i in meta.ledgers}
        for bookie in self.bookies:
            assert bookie.journal is not None
            orphans = set(bookie.journal.ledgers()) - named
            if orphans:
                raise SimFailure(
                    f"{bookie.name} holds ledgers no metadata names: {sorted(orphans)}"
                )

    def _count(self) -> None:
        for bookie in self.bookies:
            for name, value in bookie.counters.items():
                self.stats[f"bookie_{name}"] += value
        for owner in self.owners:
            for name, value in owner.core.counters.items():
                self.stats[name] += value
        for name, value in self.world.net.counters.items():
            self.stats[f"net_{name}"] += value
        self.stats["events"] += self.world.executed
        self.stats["truncations"] += self.truncated_below > 0


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"index {i}: {x} vs {y}"
    return f"index {min(len(a), len(b))}: lengths {len(a)} vs {len(b)}"


def _run(seed: int) -> Run:
    run = Run(seed)
    run.run()
    return run


def test_quorum_simulation(sim_seeds: list[int]) -> None:
    with quiet("streamvault"):
        totals = run_seeds("quorum sim", "tests/dataplane/log/test_quorum_sim.py", sim_seeds, Run)
    if len(sim_seeds) >= 200:  # the faults the simulation is for actually happen
        for name in (
            "recoveries_failed", "owners_fenced", "ensemble_changes", "resends", "rollovers",
            "catchup_copied", "bookie_crashes", "bookie_crashes_in_commit", "bookie_io_errors",
            "net_lost", "net_refused", "fault_race", "fault_wipe",
        ):  # fmt: skip
            assert totals[name] > 0, (name, totals)


def _stop_before_the_last_entry(original):
    def recover_open(self: ReplicatedLog, client: Any, info: Any, seen: Any) -> int:
        return max(-1, original(self, client, info, seen) - 1)

    return recover_open


def _every_bookie_vouches(self: ReplicatedLog, info: Any, seen: Any) -> tuple[dict, list]:
    bookies = self.replication.bookies
    return {bookies[b]: "" for b in info.ensemble if b in bookies}, []


BROKEN = {
    "bookies ignore fences": (
        "streamvault.dataplane.log.bookie.BookieCore.fence_epoch",
        lambda self, ledger_id: None,
    ),
    "recovery closes a ledger before its last entry": (
        "streamvault.dataplane.log.replicated_log.ReplicatedLog._recover_open",
        _stop_before_the_last_entry(ReplicatedLog._recover_open),
    ),
    "bookies forget a deleted ledger's fence": (
        "streamvault.dataplane.log.container_fences.ContainerFences.epoch",
        lambda self, container: 0,
    ),
    "recovery believes a wiped bookie": (
        "streamvault.dataplane.log.replicated_log.ReplicatedLog._witnesses",
        _every_bookie_vouches,
    ),
}
"""Safety rules the simulation must notice the absence of (a fence quorum of one is noticed
too, but only in one seed of several hundred: too slow to run here)."""
CAUGHT_AT = {"bookies forget a deleted ledger's fence": (570,)}
"""Seeds beyond the first 300 known to catch a rule's absence (a rare schedule: a zombie
resuming after the ledger's deletion and the recycling of its journal file); tried first.
A change to the simulation moves them: find the new one with the rule removed and
`--sim-seeds`."""


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_the_simulation_finds_a_broken_protocol(
    broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker can fail: with one safety rule of the protocol removed, some seed of the
    first few hundred loses acknowledged records."""
    target, replacement = BROKEN[broken]
    monkeypatch.setattr(target, replacement)
    with quiet("streamvault"):
        for seed in [*CAUGHT_AT.get(broken, ()), *range(300)]:
            try:
                _run(seed)
            except SimFailure as exc:
                assert "lost" in str(exc), exc
                return
    pytest.fail(f"{broken}: 300 seeds passed")


def test_a_seed_replays_exactly() -> None:
    with quiet("streamvault"):
        first, second = _run(11), _run(11)
    assert first.world.log == second.world.log and first.stats == second.stats
