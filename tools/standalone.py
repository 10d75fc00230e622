"""`streamvault standalone`: the whole cluster on one machine, as separate processes.

Starts the controller, the log replicas the configuration asks for (`--replicas N`: N bookie
processes, each with its own data dir `<data>/bookie-<i>`, on an abstract Unix socket named
after the data dir, or with `--bookie-transport tcp` on ports fixed for the run) and
one segment-store host (which starts the workers), restarts any of them that dies,
heartbeats the controller as `standalone`, and prints exactly one line
`streamvault ready: controller=<endpoint>` once every bookie answers, every container is
served by a worker and the controller answers (all are started at once; the workers wait
for a quorum of bookies before they recover). SIGINT/SIGTERM stop everything cleanly. The
data directory records the cluster's container count at creation (`cluster.json`); a
restart on the same data dir and port resumes where the previous run stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import zmq

from streamvault.client.controller_client import ControllerClient
from streamvault.client.protocol import messages as m
from streamvault.client.protocol import transport
from streamvault.client.protocol.errors import InvalidArgument, StreamVaultError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
RESTART_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class StandaloneConfig:
    data_dir: str = "./streamvault-data"
    port: int = 9090
    """Controller port; 0: a free port chosen at start for the run (the ready line names it)."""
    workers: int = 0  # 0 = one per usable core
    containers: int = 0  # 0 = 4 x workers at creation, then as recorded
    worker_port_base: int = 12345  # 0 = ephemeral worker ports
    allow_direct_io: bool = True
    pin_cpus: bool = True
    log_level: str = "INFO"
    cache_bytes: int = 0  # 0 = the default (25 % of RAM, at most 1 GiB)
    lts: str = ""  # "" = file:<data-dir>/lts
    s3_endpoint: str | None = None
    flush_wait_s: float = 30.0
    ledger_bytes: int = 128 << 20
    replicas: int = 0
    """Bookie processes (E = Qw = replicas); 0: the embedded single-replica log."""
    ack_quorum: int = 0
    """Durable copies before an ack; 0: a majority of `replicas`."""
    bookie_port_base: int = 3181
    """With tcp: bookie i listens on base + i; 0: ephemeral ports, chosen at start."""
    bookie_transport: str = "ipc"
    """ipc: bookie i listens on an abstract Unix socket named after the data dir (no file,
    no port; reachable from this machine's network namespace only, like 127.0.0.1); tcp:
    on 127.0.0.1 (`bookie_port_base`). The workers send every entry to each bookie, and a
    Unix socket costs less CPU per byte than loopback TCP (docs/ARCHITECTURE.md, Processes)."""
    journal_file_bytes: int = 256 << 20
    """Size of each bookie journal file (preallocated and zero-filled)."""

    def __post_init__(self) -> None:
        for name, port in (
            ("port", self.port),
            ("worker_port_base", self.worker_port_base),
            ("bookie_port_base", self.bookie_port_base),
        ):
            if not 0 <= port <= 65535:
                flag = "--" + name.replace("_", "-")
                raise InvalidArgument(f"{flag} {port}: not a TCP port (0-65535)", field=name)
        if self.replicas < 0 or self.ack_quorum < 0:
            raise InvalidArgument("--replicas and --ack-quorum must be >= 0", field="replicas")
        if self.bookie_transport not in ("ipc", "tcp"):
            raise InvalidArgument(
                f"--bookie-transport {self.bookie_transport!r}: ipc or tcp",
                field="bookie_transport",
            )
        if self.ack_quorum and not self.replicas:
            raise InvalidArgument("--ack-quorum needs --replicas", field="ack_quorum")
        if self.ack_quorum > self.replicas:
            raise InvalidArgument(
                f"--ack-quorum {self.ack_quorum} > --replicas {self.replicas}", field="ack_quorum"
            )

    @property
    def controller(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def cluster_container_count(data_dir: str, requested: int, workers: int) -> int:
    """The container count fixed when the data dir was created (recorded in cluster.json)."""
    path = os.path.join(data_dir, "cluster.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = int(json.load(f)["container_count"])
        if requested and requested != stored:
            raise InvalidArgument(
                f"--containers {requested}: {data_dir} was created with "
                f"{stored} containers, which is fixed",
                field="containers",
            )
        return stored
    count = requested or 4 * workers
    os.makedirs(data_dir, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"container_count": count}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def bookie_ipc_endpoint(data_dir: str, index: int) -> str:
    """Bookie `index`'s abstract Unix socket: named after the data dir's real path, so it is
    the same across restarts and distinct for every standalone on the machine (short enough
    for sun_path's 107 bytes whatever the path's length)."""
    digest = hashlib.sha1(os.path.realpath(data_dir).encode()).hexdigest()[:16]
    return f"ipc://@streamvault-{digest}-bookie-{index}"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Child:
    def __init__(self, role: str, command: list[str]) -> None:
        self.role = role
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.restart_at = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command)
        log.info("standalone: %s started pid=%d", self.role, self.proc.pid)


class Standalone:
    def __init__(self, config: StandaloneConfig) -> None:
        if config.port == 0:  # fixed for the run: a restarted controller binds it again
            config = replace(config, port=free_port())
        self.config = config
        self.workers = config.workers or len(os.sched_getaffinity(0))
        self.data_dir = os.path.abspath(config.data_dir)
        self.container_count = cluster_container_count(
            self.data_dir, config.containers, self.workers
        )
        if self.container_count < self.workers:
            raise InvalidArgument(
                f"{self.container_count} containers cannot feed {self.workers} workers",
                field="workers",
            )
        self.stopping = False
        me = str(os.getpid())
        base = [sys.executable, "-m", "streamvault.tools.cli"]
        common = ["--data-dir", self.data_dir, "--parent-pid", me, "--log-level", config.log_level]
        self.controller = _Child(
            "controller",
            base
            + [
                "controller",
                "--bind",
                config.controller,
                "--containers",
                str(self.container_count),
                *common,
            ],
        )
        host = base + [
            "host",
            "--workers",
            str(self.workers),
            "--containers",
            str(self.container_count),
            "--controller",
            config.controller,
            "--worker-port-base",
            str(config.worker_port_base),
            *common,
        ]
        if not config.allow_direct_io:
            host.append("--no-direct-io")
        if config.cache_bytes:
            host += ["--cache-size", str(config.cache_bytes)]
        if config.lts:
            host += ["--lts", config.lts]
        if config.s3_endpoint:
            host += ["--s3-endpoint", config.s3_endpoint]
        host += [
            "--flush-wait",
            str(config.flush_wait_s),
            "--ledger-size",
            str(config.ledger_bytes),
        ]
        if not config.pin_cpus:
            host.append("--no-pin")
        self.bookies = self._bookies(base, common)
        if self.bookies:
            spec = ",".join(f"{i}={endpoint}" for i, (endpoint, _) in enumerate(self.bookies))
            ack = config.ack_quorum or config.replicas // 2 + 1
            host += ["--bookies", spec, "--ensemble", str(config.replicas)]
            host += ["--ack-quorum", str(ack)]
        self.host = _Child("host", host)
        self.children = [self.controller, *(child for _, child in self.bookies), self.host]

    def _bookies(self, base: list[str], common: list[str]) -> list[tuple[str, _Child]]:
        config = self.config
        out = []
        for i in range(config.replicas):
            data = os.path.join(self.data_dir, f"bookie-{i}")
            if config.bookie_transport == "ipc":
                endpoint = bookie_ipc_endpoint(self.data_dir, i)
            else:
                port = config.bookie_port_base + i if config.bookie_port_base else free_port()
                endpoint = f"tcp://127.0.0.1:{port}"
            command = base + ["bookie", "--id", str(i), "--bind", endpoint]
            command += ["--journal-file-size", str(config.journal_file_bytes)]
            command += ["--controller", config.controller, *common]
            command[command.index("--data-dir") + 1] = data
            if not config.allow_direct_io:
                command.append("--no-direct-io")
            out.append((endpoint, _Child(f"bookie {i}", command)))
        return out

    def run(self) -> int:
        ctx = zmq.Context()
        beat = transport.HeartbeatSender(ctx, self.config.controller)
        try:
            # all at once: the workers wait for their bookies (worker._await_bookies) while
            # the bookies replay their journals, instead of starting only after them
            for child in self.children:
                child.start()
            if self.bookies and not self._wait_bookies():
                log.error("standalone: bookies not up after %.0fs", READY_TIMEOUT_S)
                return 1
            if not self._wait_ready(beat):
                log.error("standalone: not ready after %.0fs; stopping", READY_TIMEOUT_S)
                return 1
            print(f"streamvault ready: controller={self.config.controller}", flush=True)
            while not self.stopping:
                now = time.monotonic()
                for child in self.children:
                    self._watch(child, now)
                self._beat(beat)
                time.sleep(0.2)
            return 0
        finally:
            self._stop()
            beat.close()
            ctx.term()

    def _beat(self, beat: transport.HeartbeatSender) -> None:
        beat.beat(
            m.Heartbeat(
                role="standalone",
                id="0",
                pid=os.getpid(),
                endpoint="",
                state="up",
                info={"data_dir": self.data_dir, "container_count": self.container_count},
            )
        )
        beat.drain()

    def _wait_ready(self, beat: transport.HeartbeatSender) -> bool:
        client = ControllerClient(self.config.controller, timeout_s=2.0)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while not self.stopping and time.monotonic() < deadline:
                self._beat(beat)
                for child in self.children:
                    self._watch(child, time.monotonic())
                try:
                    cmap = client.call(m.GetContainerMap(), timeout_s=2.0)
                    if len(cmap.endpoints) == self.container_count:
                        return True
                except StreamVaultError:
                    pass
                time.sleep(0.1)
            return False
        finally:
            client.close()

    def _wait_bookies(self) -> bool:
        """Every bookie answers Hello (the workers' recovery needs them)."""
        from streamvault.client.protocol.limits import PROTOCOL_VERSION
        from streamvault.dataplane.log.bookie_client import BookieClient

        ctx = zmq.Context()
        client = BookieClient(ctx)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            for endpoint, child in self.bookies:
                while True:
                    if self.stopping or time.monotonic() > deadline:
                        return False
                    self._watch(child, time.monotonic())
                    try:
                        client.call(endpoint, m.Hello(1, PROTOCOL_VERSION, "standalone"), 1.0)
                        break
                    except StreamVaultError:
                        client.close()  # a fresh socket for the next attempt
            return True
        finally:
            client.close()
            ctx.term()

    def _watch(self, child: _Child, now: float) -> None:
        proc = child.proc
        if proc is not None:
            code = proc.poll()
            if code is None:
                return
            child.proc = None
            child.restarts += 1
            delay = min(RESTART_BACKOFF_MAX_S, 0.1 * 2 ** min(child.restarts - 1, 6))
            child.restart_at = now + delay
            log.warning(
                "standalone: %s pid=%d exited code=%s; restart in %.1fs",
                child.role,
                proc.pid,
                code,
                delay,
            )
        elif not self.stopping and now >= child.restart_at:
            child.start()

    def request_stop(self) -> None:
        self.stopping = True

    def _stop(self) -> None:
        # workers first, then the log replicas, then the controller
        for child in (self.host, *(c for _, c in self.bookies), self.controller):
            proc = child.proc
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("standalone: stopped")


def run(config: StandaloneConfig) -> int:
    standalone = Standalone(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: standalone.request_stop())
    return standalone.run()
