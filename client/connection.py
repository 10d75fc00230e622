"""Synchronous request/reply channels over ZeroMQ, with deadlines and bounded retries.

`Channel` is one DEALER to one endpoint, owned by one thread. Every request carries a fresh
request id and waits for the reply echoing it (stale replies are dropped). A request that
times out closes the socket, so nothing queued for a dead peer is delivered later to a new
one, and raises `RequestTimeout`. `Hello` is exchanged on every new socket.

`call_with_retry` retries `RetryableError`s with capped exponential backoff and jitter until
a deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.codec import next_request_id
from streamvault.client.protocol.errors import (
    ConnectionLost,
    InvalidMessage,
    RequestTimeout,
    RetryableError,
    error_from_code,
)
from streamvault.client.protocol.limits import PROTOCOL_VERSION, PROTOCOL_VERSION_MIN

T = TypeVar("T")


class Channel:
    def __init__(
        self, ctx: zmq.Context, endpoint: str, *, client_name: str = "streamvault"
    ) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.client_name = client_name
        self.sock: zmq.Socket | None = None
        self.server: m.HelloReply | None = None

    def _socket(self, deadline: float) -> zmq.Socket:
        if self.sock is None:
            self.sock = transport.client_socket(self.ctx, self.endpoint)
            hello = m.Hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION, self.client_name)
            try:
                self.server = self._roundtrip(hello, deadline, payload=None)
            except BaseException:
                self.close()
                raise
        return self.sock

    def request(self, body: Any, *, timeout_s: float) -> Any:
        """Send one request and return the decoded reply body; typed errors are raised."""
        deadline = time.monotonic() + timeout_s
        self._socket(deadline)
        try:
            return self._roundtrip(body, deadline, payload=None)
        except (RequestTimeout, ConnectionLost):
            self.close()
            raise

    def _roundtrip(self, body: Any, deadline: float, payload: Any) -> Any:
        sock = self.sock
        assert sock is not None
        rid = next_request_id()
        timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
        sock.send_multipart(codec.encode(body, rid, timeout_ms=timeout_ms), copy=False)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                raise RequestTimeout(
                    f"{type(body).__name__} to {self.endpoint}: no reply in time",
                    endpoint=self.endpoint,
                )
            frames = sock.recv_multipart(copy=False)
            try:
                header, reply = codec.decode(frames)
            except InvalidMessage:
                continue  # not for us / garbage from a confused peer: keep waiting
            if header.request_id != rid:
                continue
            if isinstance(reply, m.ErrorReply):
                raise error_from_code(reply.code, reply.message, reply.fields)
            return reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
            self.server = None


def call_with_retry(
    fn: Callable[[], T],
    *,
    deadline_s: float,
    what: str,
    backoff_s: float = 0.05,
    backoff_max_s: float = 1.0,
    attempts_max: int = 1000,
) -> T:
    """Call `fn` until it returns, a non-retryable error, or the deadline/attempt limit."""
    deadline = time.monotonic() + deadline_s
    delay = backoff_s
    last: RetryableError | None = None
    for _ in range(attempts_max):
        try:
            return fn()
        except RetryableError as exc:
            last = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(remaining, delay * (0.5 + random.random() / 2)))
        delay = min(backoff_max_s, delay * 2)
    assert last is not None
    raise type(last)(
        f"{what}: gave up after retries until the deadline: {last.message}", **last.fields
    )


class SegmentClient:
    """Synchronous data-plane calls for one thread, routed segment → worker endpoint.

    `endpoint_for(segment, refresh)` supplies routes (the controller's container map); a
    `WrongHost`, lost connection or timeout refreshes the route and retries until the
    deadline.
    """

    def __init__(
        self, ctx: zmq.Context, endpoint_for: Callable[..., str], *, attempt_timeout_s: float = 5.0
    ) -> None:
        self.ctx = ctx
        self.endpoint_for = endpoint_for
        self.attempt_timeout_s = attempt_timeout_s
        self._channels: dict[str, Channel] = {}

    def call(self, segment: str, body: Any, *, deadline_s: float = 30.0) -> Any:
        refresh = False

        def attempt() -> Any:
            nonlocal refresh
            endpoint = self.endpoint_for(segment, refresh=refresh)
            channel = self._channels.get(endpoint)
            if channel is None:
                channel = self._channels[endpoint] = Channel(self.ctx, endpoint)
            try:
                return channel.request(body, timeout_s=self.attempt_timeout_s)
            except RetryableError:
                refresh = True
                raise

        return call_with_retry(
            attempt, deadline_s=deadline_s, what=f"{type(body).__name__} {segment}"
        )

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
