"""ZeroMQ socket settings and the cross-thread waker, shared by every process.

Flow control is the application's (credit windows, bounded queues), never ZeroMQ's
high-water marks: a ROUTER drops silently at its HWM, so servers send with
ROUTER_MANDATORY and count what could not be delivered. Every socket closes with linger 0.
Servers cap inbound frames at FRAME_BYTES_MAX, which ZeroMQ enforces from the frame header
before reading the body (the peer is disconnected). Clients detect dead peers with ZMTP
heartbeats and reconnect with bounded backoff.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import zmq

from streamvault.client.protocol import codec
from streamvault.client.protocol.errors import StreamVaultError
from streamvault.client.protocol.limits import FRAME_BYTES_MAX

HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
RECONNECT_IVL_MS = 50
RECONNECT_IVL_MAX_MS = 1000
SERVER_SNDHWM = 100_000
SERVER_RCVHWM = 10_000


def server_socket(ctx: zmq.Context, kind: int = zmq.ROUTER) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX)
    sock.setsockopt(zmq.SNDHWM, SERVER_SNDHWM)
    sock.setsockopt(zmq.RCVHWM, SERVER_RCVHWM)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    return sock


def client_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER connected to `endpoint`; unsent messages are dropped when it is closed."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # the caller's window bounds what is queued
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    sock.connect(endpoint)
    return sock


def replies(sock: zmq.Socket, limit: int = 10_000) -> Iterator[tuple[Any, Any]]:
    """Decoded (header, body) of the messages waiting on a client socket, at most `limit`;
    undecodable ones are skipped (a server never sends them; a peer that does is ignored)."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            yield codec.decode(frames)
        except StreamVaultError:
            continue


class Waker:
    """Wakes a thread blocked in `zmq.Poller.poll` from another thread (an eventfd)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def wake(self) -> None:
        os.eventfd_write(self.fd, 1)

    def drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HeartbeatSender:
    """Fire-and-forget heartbeats from a server process to the controller.

    Never blocks: a heartbeat that cannot be queued is dropped (the next one follows), and
    replies are drained and ignored. Messages queued while the controller is down are
    bounded by SNDHWM.
    """

    SNDHWM = 4

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = client_socket(ctx, endpoint)
        self.sock.setsockopt(zmq.SNDHWM, self.SNDHWM)

    def beat(self, heartbeat: object) -> None:
        try:
            self.sock.send_multipart(codec.encode(heartbeat, 0), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def drain(self) -> None:
        while True:
            try:
                self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        self.sock.close(0)
