"""A TCP proxy between two processes whose behaviour is switched at run time (TESTING.md §5).

Modes:
- `pass`: forward both ways;
- `blackhole`: accept and read, forward nothing either way (a partition: TCP stays up);
- `drop_replies`: forward client -> server, discard server -> client (lost acks);
- `reset`: close every connection with RST, and every new one at once.

One thread, non-blocking sockets, bounded buffers per direction (data beyond
`BUFFER_BYTES_MAX` pending towards a slow peer is dropped, as a broken link would); listens
on 127.0.0.1 on an ephemeral port; `close()` stops the thread and every socket.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading

MODES = ("pass", "blackhole", "drop_replies", "reset")
BUFFER_BYTES_MAX = 64 * 1024 * 1024
RECV_BYTES = 256 * 1024


class _Pair:
    __slots__ = ("client", "server", "to_server", "to_client")

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.to_server = bytearray()
        self.to_client = bytearray()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        with self._lock:
            self.mode = mode
            if mode == "reset":
                for pair in list(self.pairs):
                    self._close(pair, reset=True)

    def close(self) -> None:
        self._stopping = True
        self._thread.join(timeout=10)
        for pair in list(self.pairs):
            self._close(pair, reset=True)
        self.selector.close()
        self.listener.close()

    # --- thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            for key, events in self.selector.select(timeout=0.05):
                with self._lock:
                    if key.data is None:
                        self._accept()
                    else:
                        self._serve(key.data, key.fileobj, events)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.mode == "reset":
            _rst(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=2)
        except OSError:
            _rst(client)
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        self.pairs.append(pair)
        self.selector.register(client, selectors.EVENT_READ, pair)
        self.selector.register(server, selectors.EVENT_READ, pair)

    def _serve(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        if pair not in self.pairs:
            return
        if events & selectors.EVENT_WRITE:
            self._flush(pair, sock)
        if not events & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(pair, reset=False)
            return
        from_client = sock is pair.client
        forward = self.mode == "pass" or (self.mode == "drop_replies" and from_client)
        if not forward:
            return
        out = pair.to_server if from_client else pair.to_client
        if len(out) + len(data) > BUFFER_BYTES_MAX:
            return  # a slow peer: drop, as a broken link would
        out += data
        self._flush(pair, pair.server if from_client else pair.client)

    def _flush(self, pair: _Pair, sock: socket.socket) -> None:
        out = pair.to_server if sock is pair.server else pair.to_client
        try:
            sent = sock.send(out) if out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(pair, reset=False)
            return
        del out[:sent]
        self.selector.modify(
            sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0), pair
        )

    def _close(self, pair: _Pair, *, reset: bool) -> None:
        if pair in self.pairs:
            self.pairs.remove(pair)
        for sock in (pair.client, pair.server):
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            if reset:
                _rst(sock)
            else:
                sock.close()


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
