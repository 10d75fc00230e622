"""A real bookie process for tests: started on an ephemeral port, stopped (or SIGKILLed) by
the test; its stderr goes to a log file shown when a test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

from streamvault.client.protocol import messages as m
from streamvault.client.protocol.limits import PROTOCOL_VERSION
from streamvault.dataplane.log.bookie_client import BookieClient

from .cluster import free_port


class BookieProcess:
    def __init__(
        self, data_dir: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        """`args`: more options for `streamvault bookie`."""
        self.data_dir = data_dir
        self.args = args
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.bookie.log"

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 30.0) -> BookieProcess:
        assert self.proc is None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamvault.tools.cli",
                "bookie",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--journal-file-size",
                "16M",
                *self.args,
            ],
            stderr=log,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        ctx = zmq.Context()
        client = BookieClient(ctx)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"bookie exited {self.proc.returncode}:\n{self.logs()}")
                try:
                    client.call(self.endpoint, m.Hello(1, PROTOCOL_VERSION, "test"), 0.5)
                    return
                except Exception:
                    client.close()  # a fresh socket for the next attempt
            raise AssertionError(f"bookie not ready in {timeout_s}s:\n{self.logs()}")
        finally:
            client.close()
            ctx.term()

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9
        self.proc = None
        return code

    def logs(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except FileNotFoundError:
            return "(no log)"


@contextlib.contextmanager
def running_bookies(root: Path, count: int = 3) -> Iterator[list[BookieProcess]]:
    """`count` bookie processes under `root`, started; killed at the end (after SIGCONT, in
    case a test left one stopped)."""
    procs = [BookieProcess(root / f"bookie-{i}") for i in range(count)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None:
                try:
                    os.killpg(proc.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            proc.kill()
