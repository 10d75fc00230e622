"""Synchronous requests to bookies: recovery (fence, read, re-replicate), deletion, tools.

`BookieClient` keeps one DEALER per bookie endpoint, used only by the thread that made it.
`call_many` sends one request to several bookies and waits, up to a deadline, until
`needed` of them have answered (replies and typed errors both count as answers; a bookie
that does not answer in time is reported as `RequestTimeout`). Nothing here retries: the
caller decides, with its own attempt limit (`await_hellos` is the one loop: it asks again
until enough bookies answer).

The write path does not use this module: the replicator (replicator.py) has its own
sockets and pipelines adds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    RequestTimeout,
    error_from_code,
)
from streamvault.client.protocol.limits import PROTOCOL_VERSION, PROTOCOL_VERSION_MIN

HELLO_ATTEMPT_S = 0.25
"""How long `await_hellos` waits for one round of Hello before asking again."""


class BookieClient:
    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.socks: dict[str, zmq.Socket] = {}

    def _sock(self, endpoint: str) -> zmq.Socket:
        sock = self.socks.get(endpoint)
        if sock is None:
            sock = transport.client_socket(self.ctx, endpoint)
            self.socks[endpoint] = sock
        return sock

    def call(self, endpoint: str, msg: Any, timeout_s: float) -> Any:
        """One request; the reply body, or raise its typed error (or RequestTimeout)."""
        result = self.call_many([endpoint], msg, needed=1, timeout_s=timeout_s)[endpoint]
        if isinstance(result, BaseException):
            raise result
        return result

    def call_many(
        self, endpoints: Sequence[str], msg: Any, *, needed: int, timeout_s: float
    ) -> dict[str, Any]:
        """Send `msg` to every endpoint; return {endpoint: reply body or exception} once
        `needed` have answered or the deadline passed (the rest: RequestTimeout)."""
        assert 0 < needed <= len(endpoints), (needed, len(endpoints))
        waiting: dict[int, str] = {}
        for endpoint in endpoints:
            rid = codec.next_request_id()
            frames = codec.encode(msg, rid, timeout_ms=int(timeout_s * 1000))
            self._sock(endpoint).send_multipart(frames, copy=False)
            waiting[rid] = endpoint
        results: dict[str, Any] = {}
        poller = zmq.Poller()
        for endpoint in endpoints:
            poller.register(self._sock(endpoint), zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while len(results) < needed:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in poller.poll(left_ms):
                for header, body in transport.replies(sock):
                    endpoint = waiting.pop(header.request_id, None)
                    if endpoint is None:
                        continue  # a late reply to an earlier request
                    results[endpoint] = (
                        error_from_code(body.code, body.message, body.fields)
                        if isinstance(body, m.ErrorReply)
                        else body
                    )
        for endpoint in waiting.values():
            results.setdefault(
                endpoint, RequestTimeout(f"bookie {endpoint}: no answer in {timeout_s}s")
            )
        return results

    def read_entries(
        self, endpoint: str, ledger: int, first: int, count: int, timeout_s: float
    ) -> dict[int, Any]:
        """Entries first..first+count-1 of one bookie, requested all at once: {entry: reply
        or exception}; entries without an answer in time are missing from the result."""
        sock = self._sock(endpoint)
        waiting: dict[int, int] = {}
        for entry in range(first, first + count):
            rid = codec.next_request_id()
            sock.send_multipart(codec.encode(m.ReadEntry(ledger, entry, 0, False), rid))
            waiting[rid] = entry
        out: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while waiting:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not sock.poll(left_ms):
                break
            for header, body in transport.replies(sock):
                entry = waiting.pop(header.request_id, None)
                if entry is not None:
                    out[entry] = (
                        error_from_code(body.code, body.message, body.fields)
                        if isinstance(body, m.ErrorReply)
                        else body
                    )
        if waiting:
            # replies that come later must not be taken for answers to the next request
            self.socks.pop(endpoint).close(0)
        return out

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(0)
        self.socks.clear()


def await_hellos(
    ctx: zmq.Context, endpoints: Sequence[str], *, needed: int, deadline_s: float, who: str
) -> dict[str, m.HelloReply]:
    """Ask `endpoints` for Hello, again every `HELLO_ATTEMPT_S`, until `needed` of them have
    answered or `deadline_s` passed; return the answers ({endpoint: reply}). A bookie that
    is still replaying its journal answers only once it is done."""
    hello = m.Hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION, who)
    answered: dict[str, m.HelloReply] = {}
    deadline = time.monotonic() + deadline_s
    client = BookieClient(ctx)
    try:
        while len(answered) < needed and time.monotonic() < deadline:
            left = [e for e in endpoints if e not in answered]
            replies = client.call_many(left, hello, needed=len(left), timeout_s=HELLO_ATTEMPT_S)
            for endpoint, reply in replies.items():
                if isinstance(reply, m.HelloReply):
                    answered[endpoint] = reply
    finally:
        client.close()
    return answered
