"""A real S3 endpoint for tests: `moto_server` on 127.0.0.1 (a process, spoken to over
HTTP), and a fault-injecting HTTP proxy to put in front of it."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MIB = 1024 * 1024
SERVER_START_S_MAX = 30.0
SERVER_STOP_S_MAX = 10.0
SERVER_START_TRIES = 3
THREAD_WAIT_S_MAX = 60.0
HTTP_TIMEOUT_S = 30.0
CREDENTIALS: dict[str, str] = {"access_key": "testing", "secret_key": "testing"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _answers_http(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=SERVER_STOP_S_MAX)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SERVER_STOP_S_MAX)


def start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start moto_server on a free port; retry on another port if it loses the port race."""
    for _ in range(SERVER_START_TRIES):
        port = free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                _moto_command(port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + SERVER_START_S_MAX
        while time.monotonic() < deadline and process.poll() is None:
            if _answers_http(port):
                return process, port
            time.sleep(0.05)
        stop_process(process)
    pytest.fail(f"moto_server did not answer HTTP within {SERVER_START_S_MAX}s; see {log_path}")


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>injected by the test proxy</Message></Error>"
)
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date", "expect"}
)


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream_port` (None: nothing behind it).

    Each request is answered 503 SlowDown while `fail_next` > 0 (or always without an
    upstream); a request matching `lose_reply_when` is forwarded (so it takes effect), then
    the connection is closed without a reply, like a reply lost on the way back; everything
    else is forwarded.
    """

    def __init__(self, upstream_port: int | None) -> None:
        self.upstream_port = upstream_port
        self.fail_next = 0
        self.lose_reply_when: Callable[[str, str], bool] | None = None
        self.requests: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def outcomes(self, what: str) -> int:
        with self._lock:
            return sum(1 for request in self.requests if request[2] == what)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=THREAD_WAIT_S_MAX)
        assert not self._thread.is_alive()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            if self.upstream_port is None or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                what = "failed"
            elif self.lose_reply_when is not None and self.lose_reply_when(method, path):
                self.lose_reply_when = None  # once
                what = "reply lost"
            else:
                what = "forwarded"
            self.requests.append((method, path, what))
            return what

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.upstream_port is not None
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.upstream_port, timeout=HTTP_TIMEOUT_S
        )
        try:
            upstream.request(method, path, body=body, headers=headers)
            response = upstream.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            upstream.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    pieces = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        pieces.append(self.rfile.read(size))
                        self.rfile.readline()
                        if size == 0:
                            return b"".join(pieces)
                length = self.headers.get("Content-Length")
                return self.rfile.read(int(length)) if length is not None else None

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                length = str(len(body))
                for name, value in headers:
                    if name.lower() == "content-length":
                        length = value  # a HEAD reply announces the object's length
                    elif name.lower() not in _HOP_HEADERS:
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                what = proxy._decide(self.command, self.path)
                reply = None
                if what != "failed":
                    headers = {
                        name: value
                        for name, value in self.headers.items()
                        if name.lower() not in _HOP_HEADERS
                    }
                    reply = proxy._forward(self.command, self.path, headers, body)
                if what == "forwarded" and reply is not None:
                    self._reply(*reply)
                elif what == "reply lost":
                    self.close_connection = True
                else:
                    slow_down = b"" if self.command == "HEAD" else _SLOW_DOWN
                    self._reply(503, [("Content-Type", "application/xml")], slow_down)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        return Handler
