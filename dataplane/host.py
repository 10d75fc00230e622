"""The host: supervisor of one machine's workers.

Spawns one worker process per configured worker (each pinned to one usable core where
allowed), gives worker i the containers c with c % workers == i, restarts a worker that
dies (capped exponential backoff; its containers recover from their logs on start), and
heartbeats the controller with each worker's pid and restart count. SIGTERM/SIGINT stop the
workers gracefully (SIGKILL after `stop_timeout_s`). Workers die with the host
(PR_SET_PDEATHSIG, set by the worker's entry point).

The host also creates the shared cache and starts the LTS uploader. The cache file is
unlinked as soon as it is made: the host keeps a descriptor and hands it to every worker and
the uploader it starts (`--cache-path /proc/self/fd/N`, the descriptor inherited), so the
memory goes back to the system when the last process that maps it exits, however the host
ends (a SIGKILLed host used to leave up to a GiB in /dev/shm until its data dir was started
again). The uploader listens on an abstract Unix socket the host names once at random, so a
restarted uploader binds the same endpoint its workers reconnect to.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import zmq

from streamvault.client.protocol import messages as m
from streamvault.client.protocol import transport
from streamvault.client.protocol.errors import StorageError
from streamvault.dataplane.cache.shared_cache import (
    SharedCache,
    cache_path_for,
    default_cache_bytes,
)

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 5.0
HEARTBEAT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class HostConfig:
    data_dir: str
    workers: int
    container_count: int
    controller: str
    worker_port_base: int = 12345
    """Worker i binds tcp://127.0.0.1:<base + i>; 0 puts every worker on an ephemeral port."""
    host_id: str = "0"
    allow_direct_io: bool = True
    pin_cpus: bool = True
    log_level: str = "INFO"
    stop_timeout_s: float = 10.0
    cache_bytes: int = 0
    """Shared cache size (0: default_cache_bytes())."""
    cache_block_bytes: int = 64 * 1024
    lts: str = ""
    """Chunk store spec; empty: `file:<data_dir>/lts`."""
    s3_endpoint: str | None = None
    flush_bytes: int = 0
    """Bytes of a segment not yet in LTS that trigger an upload (0: derived from the cache)."""
    flush_wait_s: float = 30.0
    ledger_bytes: int = 128 << 20
    bookies: str = ""
    """Replicated log: `id=endpoint,...` of the bookies (empty: local ledger files)."""
    ensemble: int = 0
    ack_quorum: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1")
        if self.container_count < self.workers:
            raise ValueError(
                f"container_count={self.container_count} < workers={self.workers}: "
                "a worker would own no container"
            )


class _Slot:
    def __init__(self, worker_id: int, containers: list[int], cpu: int | None, bind: str) -> None:
        self.worker_id = worker_id
        self.containers = containers
        self.cpu = cpu
        self.bind = bind
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.restart_at = 0.0


class Host:
    def __init__(self, config: HostConfig) -> None:
        self.config = config
        cpus = sorted(os.sched_getaffinity(0))
        self.slots = []
        for i in range(config.workers):
            containers = [c for c in range(config.container_count) if c % config.workers == i]
            bind = (
                f"tcp://127.0.0.1:{config.worker_port_base + i}"
                if config.worker_port_base
                else "tcp://127.0.0.1:*"
            )
            cpu = cpus[i % len(cpus)] if config.pin_cpus else None
            self.slots.append(_Slot(i, containers, cpu, bind))
        self.stopping = False
        self.ctx = zmq.Context()
        self.heartbeat = transport.HeartbeatSender(self.ctx, config.controller)
        self.lts = config.lts or f"file:{os.path.join(os.path.abspath(config.data_dir), 'lts')}"
        cache_bytes = config.cache_bytes or default_cache_bytes()
        self.cache_path = cache_path_for(config.data_dir)
        try:
            self.cache = SharedCache.create(
                self.cache_path,
                cache_bytes,
                regions=config.workers,
                block_bytes=config.cache_block_bytes,
            )
        except StorageError as exc:  # e.g. a small /dev/shm: a file on the data disk instead
            fallback = os.path.join(os.path.abspath(config.data_dir), "cache.shm")
            log.warning("host=%s %s; using %s", config.host_id, exc, fallback)
            self.cache_path = fallback
            self.cache = SharedCache.create(
                self.cache_path,
                cache_bytes,
                regions=config.workers,
                block_bytes=config.cache_block_bytes,
            )
        # keep it only as a descriptor the children inherit (module docstring)
        self.cache_fd = os.open(self.cache_path, os.O_RDWR)
        os.unlink(self.cache_path)
        self.child_cache_path = f"/proc/self/fd/{self.cache_fd}"
        region_bytes = self.cache.blocks_per_region * self.cache.block_bytes
        self.flush_bytes = config.flush_bytes or max(64 * 1024, min(8 << 20, region_bytes // 16))
        self.upload_bytes = max(self.flush_bytes, min(64 << 20, region_bytes // 4))
        # an abstract Unix socket: no port to probe and race for, cheaper than loopback TCP;
        # the same for every restart of the uploader
        self.uploader_endpoint = f"ipc://@streamvault-{uuid.uuid4().hex[:16]}-uploader"
        self.uploader = _Slot(-1, [], None, self.uploader_endpoint)
        log.info(
            "host=%s cache=%s (unlinked, fd %d) bytes=%d blocks/region=%d lts=%s flush_bytes=%d",
            config.host_id,
            self.cache_path,
            self.cache_fd,
            cache_bytes,
            self.cache.blocks_per_region,
            self.lts,
            self.flush_bytes,
        )

    def _command(self, slot: _Slot) -> list[str]:
        cfg = self.config
        cmd = [
            sys.executable,
            "-m",
            "streamvault.tools.cli",
            "worker",
            "--id",
            str(slot.worker_id),
            "--data-dir",
            cfg.data_dir,
            "--containers",
            ",".join(map(str, slot.containers)),
            "--container-count",
            str(cfg.container_count),
            "--bind",
            slot.bind,
            "--controller",
            cfg.controller,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            cfg.log_level,
        ]
        if slot.cpu is not None:
            cmd += ["--cpu", str(slot.cpu)]
        if not cfg.allow_direct_io:
            cmd.append("--no-direct-io")
        cmd += [
            "--cache-path",
            self.child_cache_path,
            "--lts",
            self.lts,
            "--uploader",
            self.uploader_endpoint,
            "--flush-bytes",
            str(self.flush_bytes),
            "--upload-bytes",
            str(self.upload_bytes),
            "--flush-wait",
            str(cfg.flush_wait_s),
            "--ledger-size",
            str(cfg.ledger_bytes),
        ]
        if cfg.s3_endpoint:
            cmd += ["--s3-endpoint", cfg.s3_endpoint]
        if cfg.bookies:
            cmd += ["--bookies", cfg.bookies, "--ensemble", str(cfg.ensemble)]
            cmd += ["--ack-quorum", str(cfg.ack_quorum)]
        return cmd

    def _uploader_command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "streamvault.tools.cli",
            "uploader",
            "--bind",
            self.uploader_endpoint,
            "--cache-path",
            self.child_cache_path,
            "--lts",
            self.lts,
            "--controller",
            self.config.controller,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            self.config.log_level,
        ]
        if self.config.s3_endpoint:
            cmd += ["--s3-endpoint", self.config.s3_endpoint]
        return cmd

    def _spawn(self, slot: _Slot) -> None:
        command = self._uploader_command() if slot is self.uploader else self._command(slot)
        slot.proc = subprocess.Popen(command, pass_fds=(self.cache_fd,))
        log.info(
            "host=%s %s started pid=%d",
            self.config.host_id,
            "uploader" if slot is self.uploader else f"worker={slot.worker_id}",
            slot.proc.pid,
        )

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.cache.close()
            os.close(self.cache_fd)

    def _run(self) -> int:
        self._spawn(self.uploader)
        for slot in self.slots:
            self._spawn(slot)
        next_beat = 0.0
        while not self.stopping:
            now = time.monotonic()
            for slot in [self.uploader, *self.slots]:
                self._watch(slot, now)
            if now >= next_beat:
                self._beat()
                next_beat = now + HEARTBEAT_INTERVAL_S
            self.heartbeat.drain()
            time.sleep(0.05)
        self._stop_workers()
        self.heartbeat.close()
        self.ctx.term()
        return 0

    def _watch(self, slot: _Slot, now: float) -> None:
        proc = slot.proc
        if proc is not None:
            code = proc.poll()
            if code is None:
                return
            slot.proc = None
            slot.restarts += 1
            delay = min(RESTART_BACKOFF_MAX_S, 0.1 * 2 ** min(slot.restarts - 1, 6))
            slot.restart_at = now + delay
            log.warning(
                "host=%s worker=%d pid=%d exited code=%s; restart %d in %.1fs",
                self.config.host_id,
                slot.worker_id,
                proc.pid,
                code,
                slot.restarts,
                delay,
            )
        elif now >= slot.restart_at:
            self._spawn(slot)

    def _beat(self) -> None:
        workers = [
            {"id": s.worker_id, "pid": s.proc.pid if s.proc else 0, "restarts": s.restarts}
            for s in self.slots
        ]
        uploader = {
            "pid": self.uploader.proc.pid if self.uploader.proc else 0,
            "restarts": self.uploader.restarts,
            "endpoint": self.uploader_endpoint,
        }
        self.heartbeat.beat(
            m.Heartbeat(
                role="host",
                id=self.config.host_id,
                pid=os.getpid(),
                endpoint="",
                state="up",
                info={
                    "workers": workers,
                    "uploader": uploader,
                    "cache_path": self.cache_path,
                    "lts": self.lts,
                },
            )
        )

    def request_stop(self) -> None:
        self.stopping = True

    def _stop_workers(self) -> None:
        procs = [s.proc for s in [*self.slots, self.uploader] if s.proc is not None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("host: worker pid=%d did not stop; killing", proc.pid)
                proc.kill()
                proc.wait()


def run(config: HostConfig) -> int:
    host = Host(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: host.request_stop())
    return host.run()
