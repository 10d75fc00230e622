"""Deterministic simulation of the bookie journal on a FaultyDisk (TESTING.md §2; fault
table rows 2, 3, 5, 8, 9).

Each seed drives one `Journal` (small files, so rollover, recycling and removal happen
often) through a random workload: entries on several ledgers (some larger than one commit,
some rewritten), fences, deletes, commits, compaction steps (copies of an old file's live
records, which must change nothing a reader sees); power cuts between calls and in the
middle of a commit, of staging a record (the journal writes records as they are staged), of
a compaction step or of recovery; EIO / ENOSPC on pwrite, fdatasync, fsync or fallocate;
rarely a bit flip in durable data or a misdirected (or silently lost) write. A model of what was
acknowledged checks, after every reopen and at the end:

(a) every acknowledged entry reads back byte-identical; once durable data was damaged, the
    reopen may stop with DataCorruption, and a live read may raise it, but no read ever
    returns wrong bytes;
(b) no phantom: nothing readable (no entry, ledger, fence) that was never staged;
(c) the state after a crash is the acknowledged one plus a prefix of the records staged
    since the last commit that returned (unacknowledged records may or may not be there,
    never in part or out of order);
    after damage to durable data, a prefix of what was acknowledged since the last verified
    reopen (a damaged tail is cut; anything else is DataCorruption);
(d) hence acknowledged fences and deletes hold (a deleted ledger never comes back, a fence
    epoch never goes down);
(e) reopen is idempotent: a second crash and reopen gives the same state and files;
(f) the journal keeps accepting and acknowledging writes after every reopen.

A failing seed prints `journal sim failed: seed=S (replay: ...)` and its step log;
`--sim-seeds N` runs more seeds, `--sim-seed S` replays one (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import errno
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from support.faulty_disk import FaultyDisk, SimulatedCrash
from support.sim_seeds import quiet, run_seeds

from streamvault.client.protocol.errors import DataCorruption, StorageError
from streamvault.dataplane.log.journal import Journal, JournalConfig
from streamvault.dataplane.log.journal_format import (
    HEADER_BYTES,
    KIND_DELETE,
    KIND_ENTRY,
    KIND_FENCE,
)

CONFIG = JournalConfig(
    file_bytes=64 * 1024,
    commit_bytes_max=16 * 1024,
    piece_bytes=8 * 1024,  # most commits are written in pieces, large entries in many
    files_recycled_max=1,
    direct=False,
    spare_thread=False,  # spares made inline: every disk call on the simulation's thread
    compact_files_min=2,  # compaction is due often
    compact_quiet_s=0,  # ...and never waits for the wall clock: the runs replay
    compact_live_percent=60,
    compact_step_bytes=4096,  # a file's copies take several steps (and commits)
)
"""Odd seeds run it with the I/O thread, even seeds without: the same disk calls either way."""
DIRECTORY = "/sim/journal"
PAYLOAD_MAX = CONFIG.file_bytes - HEADER_BYTES
CORRUPT = "<DataCorruption>"
"""What a read that raised DataCorruption is recorded as."""

Rec = tuple[int, int, int, int, int, bytes]
"""A record as queued: kind, ledger_id, entry_id, epoch, lac, payload."""
Read = bytes | str | None
"""What a read gave: the payload, None (absent), or CORRUPT."""
LedgerView = tuple[int, int, int, int | None, tuple[tuple[int, Read], ...]]
"""(ledger, last_entry_id, lac, fenced_epoch, ((entry, read), ...) for every entry queued)."""
View = tuple[tuple[int, ...], tuple[LedgerView, ...]]
"""Observable journal state: ledgers(), then a LedgerView per ledger id ever used."""


@dataclass(slots=True)
class _Ledger:
    entries: dict[int, bytes] = field(default_factory=dict)
    last: int = -1
    lac: int = -1
    fenced: int | None = None


@dataclass(slots=True)
class _Model:
    """What the journal must show after applying some records, as `Journal._apply` does."""

    ledgers: dict[int, _Ledger] = field(default_factory=dict)

    def copy(self) -> _Model:
        return _Model(
            {
                ledger_id: _Ledger(dict(state.entries), state.last, state.lac, state.fenced)
                for ledger_id, state in self.ledgers.items()
            }
        )

    def apply(self, rec: Rec) -> None:
        kind, ledger_id, entry_id, epoch, lac, payload = rec
        if kind == KIND_DELETE:
            self.ledgers.pop(ledger_id, None)
            return
        state = self.ledgers.setdefault(ledger_id, _Ledger())
        if kind == KIND_ENTRY:
            state.entries[entry_id] = payload
            state.last = max(state.last, entry_id)
            state.lac = max(state.lac, lac)
        else:
            state.fenced = max(epoch, state.fenced or 0)

    def view(self, universe: list[tuple[int, list[int]]]) -> View:
        per: list[LedgerView] = []
        for ledger_id, entry_ids in universe:
            state = self.ledgers.get(ledger_id)
            if state is None:
                per.append((ledger_id, -1, -1, None, tuple((e, None) for e in entry_ids)))
            else:
                entries = tuple((e, state.entries.get(e)) for e in entry_ids)
                per.append((ledger_id, state.last, state.lac, state.fenced, entries))
        return tuple(sorted(self.ledgers)), tuple(per)


class _Unrecoverable(Exception):  # an expected end of a run
    """Reopen stopped with DataCorruption after durable data was damaged: the run ends."""


class SimFailure(AssertionError):
    """An invariant does not hold."""


class _Sim:
    """One seed's run (see module docstring)."""

    def __init__(self, seed: int, *, io_thread: bool | None = None) -> None:
        self.seed = seed
        io_thread = bool(seed % 2) if io_thread is None else io_thread
        self.config = dataclasses.replace(CONFIG, io_thread=io_thread)
        self.rng = random.Random(seed)
        self.disk = FaultyDisk(f"disk-{seed}")
        self.log: list[str] = []
        self.step = 0
        self.journal: Journal | None = None
        self.origin = _Model()  # the state the history applies to
        self.history: list[Rec] = []  # what the journal's state is made of, in order
        self.acked = _Model()  # the history applied
        self.partial: set[int] = set()  # deleted ledgers that came back in part (see _agrees)
        self.committed: dict[tuple[int, int], set[bytes]] = {}  # every payload handed to commit
        self.fenced_max: dict[int, int] = {}  # highest fence epoch handed to commit
        self.queued: list[tuple[Rec, int]] = []
        self.live: list[int] = []
        self.dead: set[int] = set()
        self.next_ledger = 1
        self.next_entry: dict[int, int] = {}
        self.added: dict[int, set[int]] = {}
        self.tainted = False  # durable data damaged since the last verified reopen
        self.overwritten = False  # a misdirected write landed over older data since then
        self.damage_left = 2 if self.rng.random() < 0.2 else 0  # flips and misdirects to do
        self.token = 0
        self.stats: Counter[str] = Counter()

    def note(self, text: str) -> None:
        self.log.append(f"{self.step:4d} {text}")

    def fail(self, text: str) -> None:
        raise SimFailure(text)

    # --- the run -----------------------------------------------------------------------
    def steps(self) -> list[str]:
        return self.log

    def run(self) -> None:
        rng = self.rng
        self.note("open")
        self.journal = Journal(DIRECTORY, self.config, disk=self.disk)
        steps = rng.randint(150, 350)
        try:
            for self.step in range(1, steps + 1):
                roll = rng.random()
                if roll < 0.50:
                    self.add()
                elif roll < 0.55:
                    self.fence()
                elif roll < 0.60:
                    self.delete()
                elif roll < 0.83:
                    self.commit()
                elif roll < 0.86:
                    self.note("crash")
                    self.restart(self._staged())
                elif roll < 0.88:
                    self.note("close + reopen")
                    self.journal.close()
                    self._drop(self.journal)
                    staged, self.queued = self._staged(), []
                    self.reopen(staged)
                elif roll < 0.89:
                    if self.damage_left and rng.random() < 0.3:
                        self.flip()
                elif roll < 0.95:
                    self.check_live()
                elif roll < 0.955:
                    self.oversize()
                elif roll < 0.98:
                    self.commit()
                else:
                    self.compact()
            self.step += 1
            self.note("final crash + reopen")
            self.restart(self._staged())
            self.keeps_accepting()
        except _Unrecoverable as exc:
            self.stats["runs_ended_by_corruption"] += 1
            self.note(f"reopen detected the damage, run ends: {exc}")
        self._drop(self.journal)
        self.stats.update({f"disk_{k}": v for k, v in self.disk.counters.items()})
        self.stats["steps"] += self.step

    # --- workload steps ------------------------------------------------------------------
    def _ledger(self) -> int:
        rng = self.rng
        if not self.live or (len(self.live) < 5 and rng.random() < 0.08):
            ledger_id = self.next_ledger
            self.next_ledger += 1
            self.live.append(ledger_id)
            self.next_entry[ledger_id] = 0
            self.added[ledger_id] = set()
        return rng.choice(self.live)

    def _queue(self, rec: Rec) -> None:
        """A record the journal took: from now on it may be durable (a later record that
        cuts its commit makes it so), acknowledged only by the commit that returns it."""
        self.token += 1
        self.queued.append((rec, self.token))
        kind, ledger_id, entry_id, epoch, _, payload = rec
        if kind == KIND_ENTRY:
            self.committed.setdefault((ledger_id, entry_id), set()).add(payload)
        elif kind == KIND_FENCE:
            self.fenced_max[ledger_id] = max(epoch, self.fenced_max.get(ledger_id, 0))

    def _staged(self) -> list[Rec]:
        """The records staged since the last commit: a prefix of them may survive a crash
        (the journal writes them while they are staged)."""
        return [rec for rec, _ in self.queued]

    def _stage(self, call: Callable[[], None], rec: Rec) -> bool:
        """Stage `rec` with `call` (add_entry, fence or delete_ledger), sometimes with a
        power cut or an I/O error armed: staging writes the pieces of the records before
        it. False if the journal crashed or failed (the run went on after a restart)."""
        rng, disk = self.rng, self.disk
        roll = rng.random()
        if roll < 0.03:
            calls = rng.randint(1, 3)
            disk.crash_after(calls)
            self.note(f"  [crash after {calls} disk calls]")
        elif roll < 0.05:
            op = rng.choice(("pwrite", "fdatasync"))
            disk.fail_next(op, errno.EIO)
            self.note(f"  [fail_next {op} EIO]")
        before = dict(disk.counters)
        try:
            call()
            journal = self.journal
            assert journal is not None
            journal.wait_written()  # the I/O thread's disk calls happen here, in one order
        except SimulatedCrash:
            self.note("  -> power cut while staging")
            self.stats["crashes_in_stage"] += 1
            self.restart(self._staged())
            return False
        except StorageError as exc:
            if disk.counters["faults_fired"] == before["faults_fired"]:
                self.fail(f"staging raised StorageError without an injected fault: {exc!r}")
            # the error is raised by the add inline, by `wait_written` with the I/O thread
            self.note(f"  -> StorageError (expected): {str(exc).replace(' in write:', ' in add:')}")
            self.refuses()
            self.stats["stage_failures"] += 1
            self.restart(self._staged())
            return False
        finally:
            disk.clear_faults()
        if disk.counters["faults_fired"] != before["faults_fired"]:
            self.fail("an injected I/O error fired but staging succeeded")
        self._queue(rec)
        return True

    def add(self) -> None:
        assert self.journal is not None
        rng = self.rng
        ledger_id = self._ledger()
        nxt = self.next_entry[ledger_id]
        if nxt and rng.random() < 0.08:
            entry_id = rng.randrange(nxt)  # a rewrite: the latest copy wins
        else:
            entry_id = nxt
            self.next_entry[ledger_id] = nxt + 1
        roll = rng.random()
        if roll < 0.6:
            size = rng.randint(0, 600)
        elif roll < 0.85:
            size = rng.randint(600, 6000)
        elif roll < 0.95:
            size = rng.randint(6000, CONFIG.commit_bytes_max)
        else:
            size = rng.randint(CONFIG.commit_bytes_max, 40_000)  # a commit of its own
        lac = rng.randint(-1, entry_id - 1) if entry_id else -1
        payload = rng.randbytes(size)
        epoch = rng.randint(1, 3)
        self.note(f"add l={ledger_id} e={entry_id} bytes={size} lac={lac}")
        self.added[ledger_id].add(entry_id)
        journal, token = self.journal, self.token + 1
        self._stage(
            lambda: journal.add_entry(
                ledger_id, entry_id, epoch=epoch, lac=lac, payload=payload, token=token
            ),
            (KIND_ENTRY, ledger_id, entry_id, epoch, lac, payload),
        )

    def fence(self) -> None:
        assert self.journal is not None
        ledger_id = self._ledger()
        epoch = self.rng.randint(0, 9)
        self.note(f"fence l={ledger_id} epoch={epoch}")
        journal, token = self.journal, self.token + 1
        self._stage(
            lambda: journal.fence(ledger_id, epoch=epoch, token=token),
            (KIND_FENCE, ledger_id, 0, epoch, -1, b""),
        )

    def delete(self) -> None:
        assert self.journal is not None
        rng = self.rng
        again = [d for d in sorted(self.dead) if d in self.acked.ledgers]
        if again and rng.random() < 0.3:
            ledger_id = rng.choice(again)  # its delete was lost in a crash: delete again
        elif self.live:
            ledger_id = self.live.pop(rng.randrange(len(self.live)))
            self.dead.add(ledger_id)
        else:
            return
        self.note(f"delete l={ledger_id}")
        journal, token = self.journal, self.token + 1
        self._stage(
            lambda: journal.delete_ledger(ledger_id, token=token),
            (KIND_DELETE, ledger_id, 0, 0, -1, b""),
        )

    def oversize(self) -> None:
        assert self.journal is not None
        ledger_id = self._ledger()
        self.note(f"add oversize l={ledger_id}: ValueError expected")
        with pytest.raises(ValueError, match="payload"):
            self.journal.add_entry(
                ledger_id, 0, epoch=1, lac=-1, payload=bytes(PAYLOAD_MAX + 1), token=None
            )

    def commit(self) -> None:
        assert self.journal is not None
        rng, disk = self.rng, self.disk
        fault = ""
        roll = rng.random()
        if roll < 0.05:
            op = rng.choice(("pwrite", "fdatasync", "fsync", "allocate"))
            err = rng.choice((errno.EIO, errno.ENOSPC))
            disk.fail_next(op, err)
            fault = f" [fail_next {op} {errno.errorcode[err]}]"
        elif roll < 0.15:
            calls = rng.randint(1, 3) if rng.random() < 0.7 else rng.randint(1, 30)
            disk.crash_after(calls)
            fault = f" [crash after {calls} disk calls]"
        elif roll < 0.2 and self.damage_left and self.acked.ledgers:
            self.damage_left -= 1
            if rng.random() < 0.2:
                delta = rng.choice((-1, 1)) * 10**9  # off the file: a silently lost write
            else:
                delta = rng.choice((-1, 1)) * rng.randint(1, 6) * 4096
            disk.misdirect_next_write(delta)
            self.overwritten |= -(10**9) < delta < 0
            fault = f" [misdirect next write by {delta}]"
        recs = self._staged()
        tokens = [token for _, token in self.queued]
        self.queued = []
        self.note(f"commit {len(recs)} records{fault}")
        before = dict(disk.counters)
        try:
            got = self.journal.commit()
        except StorageError as exc:
            self._damaged(before)
            if disk.counters["faults_fired"] == before["faults_fired"]:
                self.fail(f"commit raised StorageError without an injected fault: {exc!r}")
            self.note(f"  -> StorageError (expected): {exc}")
            self.refuses()
            self.stats["commit_failures"] += 1
            self.restart(recs)
            return
        except SimulatedCrash:
            self._damaged(before)
            self.note("  -> power cut during the commit")
            self.stats["crashes_in_commit"] += 1
            self.restart(recs)
            return
        self._damaged(before)
        if disk.counters["faults_fired"] != before["faults_fired"]:
            self.fail("an injected I/O error fired but commit succeeded")
        disk.clear_faults()
        if got != tokens:
            self.fail(f"commit returned tokens {got}, expected {tokens}")
        for rec in recs:
            self.acked.apply(rec)
        self.history += recs
        self.stats["commits_acked"] += 1
        if rng.random() < 0.1:
            self.check_live()

    def compact(self) -> None:
        """Commit, then a few compaction steps (only between commits), sometimes with a
        power cut or an I/O error armed. Compaction copies records without changing what
        the journal shows: after a crash, the state is the acknowledged one."""
        self.commit()
        rng, disk = self.rng, self.disk
        for _ in range(rng.randint(1, 4)):
            journal = self.journal
            assert journal is not None and not self.queued
            fault = ""
            roll = rng.random()
            if roll < 0.1:
                calls = rng.randint(1, 8)
                disk.crash_after(calls)
                fault = f" [crash after {calls} disk calls]"
            elif roll < 0.15:
                op = rng.choice(("pwrite", "fdatasync", "fsync", "allocate"))
                disk.fail_next(op, errno.EIO)
                fault = f" [fail_next {op} EIO]"
            before = dict(disk.counters)
            try:
                moved = journal.compact_step()
            except SimulatedCrash:
                self.note(f"compact{fault} -> power cut")
                self.stats["crashes_in_compact"] += 1
                self.restart([])
                return
            except StorageError as exc:
                fired = disk.counters["faults_fired"] != before["faults_fired"]
                if not fired and not self.tainted:
                    self.fail(f"compaction raised StorageError without a fault: {exc!r}")
                self.note(f"compact{fault} -> StorageError (expected): {exc}")
                self.refuses()
                self.stats["compact_failures"] += 1
                self.restart([])
                return
            finally:
                disk.clear_faults()
            if disk.counters["faults_fired"] != before["faults_fired"]:
                self.fail("an injected I/O error fired but compaction succeeded")
            self.note(f"compact{fault}: {moved} records copied, files {journal.files()}")
            self.stats["records_compacted"] += moved

    def _damaged(self, before: dict[str, int]) -> None:
        """Taint the run if a misdirected or lost write just happened."""
        counters = self.disk.counters
        for name in ("writes_misdirected", "writes_lost"):
            if counters[name] != before[name]:
                self.note(f"  ({name.replace('_', ' ')})")
                self.tainted = True

    def refuses(self) -> None:
        """After an I/O error the journal refuses everything (fail-stop)."""
        journal = self.journal
        assert journal is not None
        attempts = (
            lambda: journal.add_entry(1, 0, epoch=1, lac=-1, payload=b"x", token=None),
            lambda: journal.fence(1, epoch=1, token=None),
            lambda: journal.delete_ledger(1, token=None),
            journal.commit,
        )
        for attempt in attempts:
            try:
                attempt()
            except StorageError:
                continue
            self.fail("a failed journal accepted a call")

    def flip(self) -> None:
        files = [n for n in self.disk.names(DIRECTORY) if n.startswith("journal-")]
        if not files:
            return
        name = self.rng.choice(files)
        pos = self.disk.flip_bit(f"{DIRECTORY}/{name}")
        self.note(f"flip a bit of {name} at {pos}")
        self.tainted = True
        self.damage_left -= 1
        self.stats["bit_flips"] += 1
        self.check_live()

    # --- restart and checks ------------------------------------------------------------
    def _drop(self, journal: Journal | None) -> None:
        if journal is not None:
            self.stats.update({f"journal_{k}": v for k, v in journal.counters.items()})

    def restart(self, inflight: list[Rec]) -> None:
        """Power cut (the journal object dies with the process), then reopen."""
        self.disk.crash()
        self._drop(self.journal)
        self.journal = None
        self.queued = []  # `inflight`: those handed to commit, or staged since the last
        self.reopen(inflight)

    def _open(self, *, allow_crash: bool) -> Journal:
        rng, disk = self.rng, self.disk
        for attempt in range(4):
            if allow_crash and attempt < 3 and rng.random() < 0.25:
                calls = rng.randint(1, 4) if rng.random() < 0.5 else rng.randint(1, 40)
                disk.crash_after(calls)
                self.note(f"  reopen [crash after {calls} disk calls]")
            try:
                journal = Journal(DIRECTORY, self.config, disk=disk)
            except SimulatedCrash:
                self.note("  -> power cut during recovery")
                self.stats["crashes_in_recovery"] += 1
                disk.crash()
                continue
            except DataCorruption as exc:
                disk.clear_faults()
                if not self.tainted:
                    raise SimFailure(f"reopen: DataCorruption without damage: {exc}") from exc
                raise _Unrecoverable(str(exc)) from exc
            disk.clear_faults()
            return journal
        raise AssertionError("unreachable: the last attempt is never crashed")

    def reopen(self, inflight: list[Rec]) -> None:
        self.journal = journal = self._open(allow_crash=True)
        universe = [(ledger, sorted(self.added[ledger])) for ledger in range(1, self.next_ledger)]
        observed = _observe(journal, universe)
        self._match(observed, inflight, universe)
        files = journal.files()
        # (e) idempotent: another power cut (closed or not) and reopen changes nothing
        if self.rng.random() < 0.5:
            journal.close()
        self._drop(journal)
        self.disk.crash()
        self.journal = journal = self._open(allow_crash=False)
        again = _observe(journal, universe)
        if again != observed or journal.files() != files:
            self.fail(
                "reopen is not idempotent:\n"
                + _diff(again, observed)
                + f"\nfiles {journal.files()} != {files}"
            )
        self.stats["reopens"] += 1

    def _match(
        self, observed: View, inflight: list[Rec], universe: list[tuple[int, list[int]]]
    ) -> None:
        """(a)-(d): the observed state is the acknowledged one plus a prefix of `inflight`;
        after damage to durable data, the state after some prefix of everything
        acknowledged (the damaged tail commits cut), see `_agrees`."""
        recs = self.history + inflight
        if self.tainted:
            start, model = 0, self.origin.copy()
        else:
            start, model = len(self.history), self.acked.copy()
        views: list[View] = []  # views[k]: after recs[: start + k]
        candidate = model.copy()
        for i in range(start, len(recs) + 1):
            views.append(candidate.view(universe))
            if i < len(recs):
                candidate.apply(recs[i])
        for relaxed in (False, True) if self.tainted else (False,):
            for i in range(len(recs), start - 1, -1):  # the longest prefix that agrees
                cut = {r[1] for r in recs[i:] if r[0] == KIND_DELETE} & self.dead
                partial = self.partial | cut if relaxed else self.partial
                if _agrees(observed, views[i - start], partial):
                    for rec in recs[start:i]:
                        model.apply(rec)
                    self._matched(i, recs, model, inflight, partial, observed, views[i - start])
                    return
        if self.tainted and self.overwritten:
            self._no_wrong_bytes(observed)
            return
        expected = self.acked.view(universe)
        self.fail(
            f"state after reopen matches no allowed state ({len(inflight)} records in flight, "
            f"tainted={self.tainted}); differences from the acknowledged state:\n"
            + _diff(observed, expected)
        )

    def _matched(
        self,
        i: int,
        recs: list[Rec],
        model: _Model,
        inflight: list[Rec],
        partial: set[int],
        observed: View,
        expected: View,
    ) -> None:
        taken = i - len(self.history)
        text = f"  reopened: state = acked + {max(taken, 0)}/{len(inflight)} in-flight records"
        if taken < 0:
            text = f"  reopened after damage: the last {-taken} acked records are cut"
            self.stats["acked_cut_after_damage"] += 1
        differ = {
            got[0]
            for got, want in zip(observed[1], expected[1], strict=True)
            if got != want or (got[0] in observed[0]) != (got[0] in expected[0])
        }
        back = (partial & differ) | self.partial  # from now on they may show any part
        if back - self.partial:
            text += f"; deleted ledgers {sorted(back - self.partial)} came back in part"
            self.stats["deleted_came_back_after_damage"] += 1
        self.note(text)
        self.partial |= back
        self.overwritten = False
        self.history = recs[:i]
        self.acked = model
        self.tainted = False

    def _no_wrong_bytes(self, observed: View) -> None:
        """The weakest check, after a misdirected write over older data that no prefix
        explains (over the first commits of the oldest file, whose predecessor commit is
        unknown, it is undetectable): every
        read gives bytes once committed for that entry, nothing else; then the observed
        state becomes the new origin of the model."""
        model = _Model()
        for ledger_id, last, lac, fenced, entries in observed[1]:
            if ledger_id not in observed[0]:
                if last != -1 or any(v is not None for _, v in entries):
                    self.fail(f"ledger {ledger_id} is not listed but shows data")
                continue
            if (fenced or 0) > self.fenced_max.get(ledger_id, 0):
                self.fail(f"ledger {ledger_id} fenced at {fenced}, never committed")
            state = model.ledgers[ledger_id] = _Ledger(last=last, lac=lac, fenced=fenced)
            for entry_id, value in entries:
                if value is None:
                    continue
                if value == CORRUPT or value not in self.committed.get((ledger_id, entry_id), ()):
                    self.fail(f"ledger {ledger_id} entry {entry_id} = {_short(value)}: wrong bytes")
                assert isinstance(value, bytes)
                state.entries[entry_id] = value
        if not set(observed[0]) <= set(model.ledgers):
            self.fail(f"phantom ledgers {sorted(set(observed[0]) - set(model.ledgers))}")
        self.note(
            "  reopened after damage: acked records lost (no prefix explains it), no wrong bytes"
        )
        self.stats["acked_lost_after_damage_unexplained"] += 1
        self.partial |= self.dead
        self.history = []
        self.acked = model
        self.tainted = self.overwritten = False
        self.origin = model.copy()

    def check_live(self) -> None:
        """The live journal shows exactly what was acknowledged (a read of damaged data may
        raise DataCorruption, never return other bytes)."""
        assert self.journal is not None
        universe = [(ledger, sorted(self.added[ledger])) for ledger in range(1, self.next_ledger)]
        observed = _observe(self.journal, universe)
        expected = self.acked.view(universe)
        if self.tainted:
            observed = _excuse_corrupt(observed, expected)
        if not _agrees(observed, expected, self.partial):
            self.fail(
                "live journal state differs from the acknowledged state:\n"
                + _diff(observed, expected)
            )
        self.stats["live_checks"] += 1

    def keeps_accepting(self) -> None:
        """(f) after a reopen, a new entry is acknowledged and survives another reopen."""
        assert self.journal is not None
        ledger_id = self.next_ledger
        self.next_ledger += 1
        self.added[ledger_id] = {0}
        payload = self.rng.randbytes(self.rng.randint(1, 20_000))
        self.note(f"add l={ledger_id} e=0 bytes={len(payload)}, commit, crash, reopen")
        self.journal.add_entry(ledger_id, 0, epoch=1, lac=-1, payload=payload, token="last")
        if self.journal.commit() != ["last"]:
            self.fail("the final commit did not acknowledge its entry")
        rec: Rec = (KIND_ENTRY, ledger_id, 0, 1, -1, payload)
        self.committed[(ledger_id, 0)] = {payload}
        self.acked.apply(rec)
        self.history.append(rec)
        self.restart([])
        if self.journal.read_entry(ledger_id, 0) != payload:
            self.fail("the final acknowledged entry did not survive a reopen")


def _read(journal: Journal, ledger_id: int, entry_id: int) -> Read:
    try:
        return journal.read_entry(ledger_id, entry_id)
    except DataCorruption:
        return CORRUPT


def _observe(journal: Journal, universe: list[tuple[int, list[int]]]) -> View:
    per: list[LedgerView] = []
    for ledger_id, entry_ids in universe:
        entries = tuple((e, _read(journal, ledger_id, e)) for e in entry_ids)
        per.append(
            (
                ledger_id,
                journal.last_entry_id(ledger_id),
                journal.lac(ledger_id),
                journal.fenced_epoch(ledger_id),
                entries,
            )
        )
    return tuple(journal.ledgers()), tuple(per)


def _agrees(observed: View, expected: View, partial: set[int]) -> bool:
    """`observed` is `expected`, except that a ledger in `partial` may show any part of it.

    Such a ledger was deleted by a commit that was then damaged in its place at the tail
    (undetectable: a torn in-flight commit looks the same), after the delete had let the
    journal remove the older files holding its first entries: it comes back with what the
    newer files hold, byte-identical, never with other bytes."""
    if not partial:
        return observed == expected
    if {x for x in observed[0] if x not in partial} != {x for x in expected[0] if x not in partial}:
        return False
    for got, want in zip(observed[1], expected[1], strict=True):
        if got[0] not in partial:
            if got != want:
                return False
            continue
        want_entries = dict(want[4])
        if any(v is not None and v != want_entries[e] for e, v in got[4]):
            return False
        if got[1] > want[1] or got[2] > want[2] or (got[3] or 0) > (want[3] or 0):
            return False
    return True


def _excuse_corrupt(observed: View, expected: View) -> View:
    """`observed` with each CORRUPT read replaced by the expected value (damage detected)."""
    per: list[LedgerView] = []
    for got, want in zip(observed[1], expected[1], strict=True):
        fixed = tuple(
            (e, w[1] if v == CORRUPT else v) for (e, v), w in zip(got[4], want[4], strict=True)
        )
        per.append((got[0], got[1], got[2], got[3], fixed))
    return observed[0], tuple(per)


def _short(value: object) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes {value[:8].hex()}..>"
    return repr(value)


def _diff(observed: View, expected: View, limit: int = 20) -> str:
    lines: list[str] = []
    if observed[0] != expected[0]:
        lines.append(f"  ledgers() = {list(observed[0])}, expected {list(expected[0])}")
    for got, want in zip(observed[1], expected[1], strict=True):
        ledger_id = got[0]
        for name, index in (("last_entry_id", 1), ("lac", 2), ("fenced_epoch", 3)):
            if got[index] != want[index]:
                lines.append(f"  ledger {ledger_id} {name} = {got[index]}, expected {want[index]}")
        for (entry_id, value), (_, wanted) in zip(got[4], want[4], strict=True):
            if value != wanted:
                lines.append(
                    f"  ledger {ledger_id} entry {entry_id} = {_short(value)}, "
                    f"expected {_short(wanted)}"
                )
    return "\n".join(lines[:limit]) or "  (no difference)"


def test_journal_simulation(sim_seeds: list[int]) -> None:
    with quiet("streamvault.dataplane.log.journal"):
        totals = run_seeds(
            "journal sim", "tests/dataplane/log/test_journal_sim.py", sim_seeds, _Sim
        )
    if len(sim_seeds) >= 200:  # the faults the simulation is for actually happen
        for name in (
            "disk_crashes", "disk_pages_torn", "disk_pages_garbled", "disk_dir_ops_dropped",
            "commit_failures", "crashes_in_commit", "crashes_in_recovery", "bit_flips",
            "disk_writes_misdirected", "disk_writes_lost", "journal_files_recycled",
            "journal_files_deleted", "journal_tail_cuts", "journal_compactions",
            "records_compacted", "crashes_in_compact", "compact_failures",
        ):  # fmt: skip
            assert totals[name] > 0, (name, totals)


def test_a_seed_replays_exactly() -> None:
    with quiet("streamvault.dataplane.log.journal"):
        first, second = _Sim(7), _Sim(7)
        first.run()
        second.run()
    assert first.log == second.log and first.stats == second.stats


@pytest.mark.parametrize("seed", [3, 8, 11])
def test_the_io_thread_changes_no_disk_call(seed: int) -> None:
    """With or without the journal's I/O thread a seed runs the same disk calls, faults and
    crashes (pieces, then the fdatasync, strictly in order), so it ends the same."""
    with quiet("streamvault.dataplane.log.journal"):
        inline, threaded = _Sim(seed, io_thread=False), _Sim(seed, io_thread=True)
        inline.run()
        threaded.run()
    assert inline.log == threaded.log and inline.stats == threaded.stats
    assert threaded.stats["journal_commits"] > 0


def test_faulty_disk_keeps_only_what_was_synced() -> None:
    disk = FaultyDisk(1)
    lock = disk.lock_dir("/d")
    with pytest.raises(BlockingIOError):
        disk.lock_dir("/d")
    disk.close(lock)
    fd = disk.open_write("/d/a", direct=False, create=True)
    disk.pwrite(fd, b"x" * 8192, 0)
    disk.fsync(fd)
    disk.fsync_dir("/d")
    disk.pwrite(fd, b"y" * 8192, 0)  # pending: each page kept, dropped, torn or garbled
    disk.rename("/d/a", "/d/b")  # pending until fsync_dir
    disk.fail_next("fdatasync", errno.EIO)
    with pytest.raises(OSError, match="injected"):
        disk.fdatasync(fd)
    disk.crash()
    assert disk.names("/d") in (["a"], ["b"])
    name = disk.names("/d")[0]
    data = disk.durable_bytes(f"/d/{name}")
    assert len(data) == 8192
    with pytest.raises(OSError, match="bad handle"):
        disk.pwrite(fd, b"z", 0)  # handles die with the crash
    fd = disk.open_write(f"/d/{name}", direct=False)
    disk.pwrite(fd, b"z" * 4096, 4096)
    disk.fdatasync(fd)
    disk.crash()
    assert disk.durable_bytes(f"/d/{name}")[4096:] == b"z" * 4096
    disk.crash_after(2)
    disk.listdir("/d")
    with pytest.raises(SimulatedCrash):
        disk.listdir("/d")
    disk.crash()
    assert disk.listdir("/d") == [name]
