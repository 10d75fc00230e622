"""TESTING.md row 13: a zombie owner (SIGSTOP, failover, SIGCONT): its appends and LTS
writes fail as fenced.

Real processes: a controller, three bookies (E = Qw = 3, Qa = 2), a shared coordination
store and file LTS, an owner worker (A) and a standby worker (B, `--standby`) for the same
two containers. A is written to by a client and SIGSTOPped, either from outside at a
moment of the write, or by itself at a stop point (`before_chunk_meta`: a chunk stored in
LTS whose CHUNK record A has not logged yet, which B's recovery then collects as an orphan).
B sees A's heartbeats stop and takes over (epoch CAS, the ledgers fenced on the bookies);
the client's writes go on against B. A raw client then queues an append on A's socket and
A is SIGCONTed: whatever it still tries (that append, resends of entries in flight, due
uploads and their CHUNK records, a rollover) must fail as fenced, and A must stop (exit 3)
without acknowledging anything.

Checked: every event the client had acknowledged is read back through the public API once,
in order per key, with nothing nobody acknowledged (the zombie's append is a phantom key);
no chunk A wrote after the takeover, nor the one it stored before logging it, is referenced
by the segments' metadata as the next owner recovers it, and every referenced chunk exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
import zmq
from support.bookies import running_bookies
from support.cluster import free_port
from support.history import (
    check_exactly_once,
    event,
    expected_counts,
    read_all,
    unique,
    write_in_background,
)

from streamvault.client import StreamManager
from streamvault.client.protocol import codec
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.events import frame_events
from streamvault.client.protocol.limits import PROTOCOL_VERSION, PROTOCOL_VERSION_MIN
from streamvault.dataplane.container import Container
from streamvault.dataplane.container.recovery import recover as recover_container
from streamvault.dataplane.container.tiering import parse_chunk_name
from streamvault.dataplane.log import LocalFileStore, LogConfig
from streamvault.dataplane.log.replicated_log import ReplicatedLog, ReplicationConfig
from streamvault.dataplane.log.replicator import Replicator

CONTAINERS = 2
KEYS = 16
TOTAL = 24_000
ZOMBIE_KEY = 999
"""The raw client's event: any appearance in the read-back is a phantom."""
LEDGER = 32 << 20
EXIT_STORAGE_FAILURE = 3
WAIT_S = 30.0


class Proc:
    """One streamvault role process in its own session, stderr to a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamvault.tools.cli", *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stopped(self) -> bool:
        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_STOPPED
        except psutil.NoSuchProcess:
            return False

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):  # a stopped process first resumes
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=30)

    def logs(self, tail: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name}\n" + "\n".join(lines[-tail:])


def _until(what: str, check, timeout_s: float = WAIT_S, procs: list[Proc] = ()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not in {timeout_s}s\n" + "\n".join(p.logs() for p in procs))


def _worker(mgr: StreamManager, wid: str) -> m.ProcessInfo | None:
    for p in mgr.status().processes:
        if p.role == "worker" and p.id == wid:
            return p
    return None


class RawWriter:
    """A bare DEALER on the zombie's endpoint: SetupAppend before the pause, one append
    queued while it is stopped, and every reply it ever sends recorded."""

    def __init__(self, ctx: zmq.Context, endpoint: str, segment: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.segment = segment.encode()
        self.writer_id = os.urandom(16)
        self.replies: list[object] = []
        self._call(m.Hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION, "zombie-test"))
        setup = self._call(m.SetupAppend(self.writer_id, self.segment))
        assert isinstance(setup, m.AppendSetup), setup
        self.next_number = setup.last_event_number + 1

    def _call(self, body, timeout_s: float = 10.0):
        self.sock.send_multipart(codec.encode(body, 1))
        assert self.sock.poll(int(timeout_s * 1000)), f"no answer to {type(body).__name__}"
        return codec.decode(self.sock.recv_multipart())[1]

    def append(self) -> None:
        payload = frame_events([event(ZOMBIE_KEY, 0)])
        n = self.next_number
        block = m.AppendBlock(self.writer_id, n, n, 1, m.NO_OFFSET, self.segment, payload)
        self.sock.send_multipart(codec.encode(block, 2))

    def collect(self, timeout_ms: int) -> None:
        while self.sock.poll(timeout_ms):
            self.replies.append(codec.decode(self.sock.recv_multipart())[1])
            timeout_ms = 0

    def close(self) -> None:
        self.sock.close(0)


def _lts_chunks(lts: Path) -> set[str]:
    return {
        str(p.relative_to(lts))
        for p in lts.rglob("*")
        if p.is_file() and parse_chunk_name(str(p.relative_to(lts)))
    }


def _referenced_chunks(coordination: Path, bookies: dict[str, str]) -> set[str]:
    """The chunks the segments' metadata names, as the next owner recovers it."""
    ctx = zmq.Context()
    rep = ReplicationConfig(bookies=bookies, ensemble=3, write_quorum=3, ack_quorum=2)
    store = LocalFileStore(str(coordination))
    replicator = Replicator(ctx, rep, lambda _: None, lambda _: None)  # never started
    names: set[str] = set()
    try:
        for cid in range(CONTAINERS):
            dlog = ReplicatedLog(
                key=f"container-{cid:04d}",
                container_id=cid,
                store=store,
                replicator=replicator,
                replication=rep,
                ctx=ctx,
                config=LogConfig(ledger_bytes=LEDGER),
            )
            container = Container(cid, checkpoint_bytes=LEDGER // 2)
            try:
                recover_container(container, dlog)
            finally:
                dlog.close()
            names |= {c.name for seg in container.by_id.values() for c in seg.chunks}
    finally:
        replicator.stop()
        ctx.term()
    return names


def _acked(futures: list) -> int:
    return sum(1 for f in list(futures) if f.done() and f.exception() is None)


@pytest.mark.parametrize("pause", ["sigstop_mid_write", "stop_point_before_chunk_meta"])
def test_a_zombie_owner_fails_as_fenced_and_nothing_it_tries_becomes_visible(
    tmp_path: Path, pause: str
):
    data, lts, logs = tmp_path / "shared", tmp_path / "lts", tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    controller = f"tcp://127.0.0.1:{port}"
    marker = tmp_path / "stopped"
    procs: list[Proc] = []
    ctx = zmq.Context()
    raw: RawWriter | None = None
    with running_bookies(tmp_path / "bookies") as bookie_procs:
        bookies = {str(i): b.endpoint for i, b in enumerate(bookie_procs)}
        common = [
            *("--data-dir", str(data), "--containers", ",".join(map(str, range(CONTAINERS)))),
            *("--container-count", str(CONTAINERS), "--controller", controller),
            *("--lts", f"file:{lts}", "--flush-bytes", str(256 << 10), "--flush-wait", "0.3"),
            *("--ledger-size", str(LEDGER), "--ack-quorum", "2"),
            *("--bookies", ",".join(f"{i}={e}" for i, e in bookies.items())),
        ]
        zombie_env = {"STREAMVAULT_STOP_POINT": f"before_chunk_meta:{marker}"}
        try:
            procs.append(
                Proc(
                    "controller",
                    ["controller", "--data-dir", str(tmp_path / "controller"), "--bind"]
                    + [controller, "--containers", str(CONTAINERS)],
                    logs,
                )
            )
            owner = Proc(
                "worker-a",
                ["worker", "--id", "0", *common],
                logs,
                env=zombie_env if pause == "stop_point_before_chunk_meta" else None,
            )
            procs.append(owner)
            with StreamManager(controller, timeout_s=WAIT_S) as mgr, ExitStack() as stack:
                a = _until("owner up", lambda: _up(mgr, "0"), procs=procs)
                standby = Proc("worker-b", ["worker", "--id", "1", "--standby", *common], logs)
                procs.append(standby)
                _until("standby waiting", lambda: _state(mgr, "1") == "standby", procs=procs)
                zombie_epochs = set(a.info["epochs"].values())
                assert len(zombie_epochs) == 1, a.info["epochs"]

                scope, stream = unique("s"), unique("t")
                mgr.create_scope(scope)
                mgr.create_stream(scope, stream, initial_segments=2)
                segment = mgr.get_stream_info(scope, stream).segments[0].segment
                raw = RawWriter(ctx, a.endpoint, segment)

                writer = mgr.create_writer(scope, stream)
                stack.callback(writer.close, timeout=0)  # flushed below on the good path
                futures: list = []
                done = threading.Event()
                thread = write_in_background(  # ~4,000 a second: the pause lands mid-write
                    writer, futures, TOTAL, done, keys=KEYS, pause_every=40
                )
                if pause == "sigstop_mid_write":
                    _until("acks before the pause", lambda: _acked(futures) >= 3000, procs=procs)
                    os.kill(owner.pid, signal.SIGSTOP)
                _until("owner stopped", owner.stopped, procs=procs)
                if pause == "stop_point_before_chunk_meta":
                    assert marker.exists()
                stopped_acked = _acked(futures)
                assert not done.is_set(), "the writer finished before the pause"

                b = _until("standby took over", lambda: _up(mgr, "1"), procs=procs)
                assert min(b.info["epochs"].values()) > max(zombie_epochs), b.info
                _until(
                    "writes go on against the new owner",
                    lambda: _acked(futures) >= stopped_acked + 100,
                    procs=procs,
                )
                assert owner.stopped()

                raw.append()  # queued on the zombie's socket while it is stopped
                time.sleep(0.05)
                before_resume = _lts_chunks(lts)
                os.kill(owner.pid, signal.SIGCONT)
                _until("zombie fail-stop", lambda: owner.proc.poll() is not None, procs=procs)
                raw.collect(1000)
                acked = [r for r in raw.replies if isinstance(r, m.DataAppended)]
                assert not acked, f"the zombie acknowledged {acked}"
                stop_reason = _stop_reason(owner)

                thread.join(timeout=120)
                assert done.is_set()
                writer.flush(timeout=120)
                assert all(f.exception() is None for f in futures)
                got = read_all(mgr, scope, stream, total=TOTAL)
            check_exactly_once(got, expected_counts(TOTAL, KEYS))

            zombie_epoch = zombie_epochs.pop()
            after = _lts_chunks(lts)
            by_zombie = {n for n in after - before_resume if parse_chunk_name(n)[4] == zombie_epoch}
            standby.proc.send_signal(signal.SIGTERM)
            assert standby.wait(30) == 0, standby.logs()
            referenced = _referenced_chunks(data / "coordination", bookies)
            assert referenced, "nothing was ever uploaded: LTS was not exercised"
            assert not referenced & by_zombie, f"zombie chunks referenced: {referenced & by_zombie}"
            missing = referenced - _lts_chunks(lts)
            assert not missing, f"referenced chunks missing from LTS: {sorted(missing)[:5]}"
            print(
                f"pause={pause} acked_before_pause={stopped_acked} zombie_stop={stop_reason} "
                f"zombie_chunks_after_takeover={len(by_zombie)} referenced={len(referenced)}"
            )
        finally:
            if raw is not None:
                raw.close()
            ctx.term()
            for proc in reversed(procs):
                proc.kill()


def _stop_reason(owner: Proc) -> str:
    """How the resumed zombie stopped: its first refused write or read is fail-stop (exit 3).
    A bookie answers `Fenced` (the new owner's recovery fenced the ledger, or its container)
    or `NoSuchLedger` once the new owner truncated the ledger away (reported as `Fenced`); a
    metadata CAS (rollover, truncation) fails with `BadVersion`; a log read of a ledger the
    new owner truncated is `Fenced` too (the log's epoch moved on). Every one stops it
    unacknowledged."""
    text = owner.log_path.read_text(errors="replace")
    code = owner.proc.returncode
    assert code == EXIT_STORAGE_FAILURE and "fail-stop" in text, f"exit {code}\n{owner.logs()}"
    for reason in ("BadVersion", "Fenced"):
        if reason in text:
            return reason
    raise AssertionError(f"fail-stop for another reason\n{owner.logs()}")


def _state(mgr: StreamManager, wid: str) -> str:
    info = _worker(mgr, wid)
    return info.state if info is not None else ""


def _up(mgr: StreamManager, wid: str) -> m.ProcessInfo | None:
    info = _worker(mgr, wid)
    if info is not None and info.state == "up" and info.info.get("epochs"):
        return info
    return None
