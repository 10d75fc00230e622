"""A real `streamvault standalone` for tests: own process group, temp data dir, a free
controller port, ephemeral worker ports; start, wait for the ready line, SIGKILL everything,
restart on the same dir and port, stop, and check that nothing is left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

READY_PREFIX = "streamvault ready: controller="


def cache_path_for_data(data_dir: Path) -> str:
    from streamvault.dataplane.cache.shared_cache import cache_path_for

    return cache_path_for(str(data_dir))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Standalone:
    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        containers: int = 8,
        port: int | None = None,
        extra: list[str] | None = None,
        cache_size: str = "64M",
        env: dict[str, str] | None = None,
    ) -> None:
        self.cache_size = cache_size
        self.env = env
        self.data_dir = data_dir
        self.workers = workers
        self.containers = containers
        self.port = free_port() if port is None else port  # 0: the standalone chooses
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.log_paths: list[Path] = []

    @property
    def controller(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 60.0) -> Standalone:
        assert self.proc is None
        self.runs += 1
        log_path = self.data_dir.parent / f"standalone-{self.port}-{self.runs}.log"
        self.log_paths.append(log_path)
        cmd = [
            sys.executable,
            "-m",
            "streamvault.tools.cli",
            "standalone",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--containers",
            str(self.containers),
            "--ephemeral-ports",
            "--no-pin",
            "--cache-size",
            self.cache_size,
            *self.small_files(),
            *self.extra,
        ]
        with open(log_path, "wb") as log:
            env = {**os.environ, **self.env} if self.env else None
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, start_new_session=True, env=env
            )
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        buffer = b""
        while time.monotonic() < deadline:
            try:
                buffer += os.read(fd, 4096)
            except BlockingIOError:
                pass
            ready = buffer.find(READY_PREFIX.encode())
            if ready >= 0 and b"\n" in buffer[ready:]:
                line = buffer[ready:].split(b"\n", 1)[0].decode()
                self.port = int(line.rsplit(":", 1)[1])  # the port it bound (asked for 0)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"standalone not ready in {timeout_s}s:\n{self.logs()}")

    def small_files(self) -> list[str]:
        """Smaller preallocated files than the defaults (128 MiB ledgers per container,
        256 MiB bookie journal files, all allocated on disk) unless a test sets its own:
        a test suite's standalones would otherwise hold many GiB of disk."""
        out = []
        if "--ledger-size" not in self.extra:
            out += ["--ledger-size", "32M"]
        if "--replicas" in self.extra and "--journal-file-size" not in self.extra:
            out += ["--journal-file-size", "32M"]
        return out

    def group_pids(self) -> list[int]:
        if self.proc is None:
            return []
        pgid = self.proc.pid
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == pgid:
                    out.append(p.pid)
            except (ProcessLookupError, PermissionError):
                continue
        return out

    def kill(self) -> None:
        """SIGKILL every process of the standalone (its whole process group)."""
        if self.proc is None:
            return
        pids = self.group_pids()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._wait_gone(pids)
        self.proc = None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the supervisor and wait until every process of the group has exited."""
        if self.proc is None:
            return 0
        pids = self.group_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"standalone did not stop in {timeout_s}s:\n{self.logs()}"
            ) from None
        self._wait_gone(pids)
        self.proc = None
        cache = Path(cache_path_for_data(self.data_dir))
        assert not cache.exists(), f"a clean stop leaves no cache file behind: {cache}"
        return code

    def _wait_gone(self, pids: list[int], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = [
                p
                for p in pids
                if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
            ]
            if not alive:
                return
            time.sleep(0.05)
        raise AssertionError(f"processes still alive: {alive}")

    def restart(self) -> Standalone:
        self.kill()
        return self.start()

    def logs(self, tail: int = 80) -> str:
        out = []
        for path in self.log_paths:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)
