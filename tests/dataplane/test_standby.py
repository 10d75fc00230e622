"""A standby worker takes its containers over only after it has seen them served and then
unserved for the grace period; a silent controller, a container still served, or a
standby started before any owner never triggers a takeover."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.dataplane.standby import StandbyConfig, wait_for_takeover


class FakeController:
    """A ROUTER answering GetContainerMap with `self.endpoints` (or not at all while
    `silent`), recording the standby's heartbeats."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = transport.server_socket(ctx)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.endpoints: dict[int, str] = {}
        self.silent = False
        self.beats: list[m.Heartbeat] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            peer, *frames = self.sock.recv_multipart()
            header, body = codec.decode(frames)
            if isinstance(body, m.Heartbeat):
                self.beats.append(body)
            elif isinstance(body, m.GetContainerMap) and not self.silent:
                reply = m.ContainerMap(4, dict(self.endpoints))
                self.sock.send_multipart([peer, *codec.encode_reply(reply, header.request_id)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close(0)


@pytest.fixture
def controller():
    ctx = zmq.Context()
    fake = FakeController(ctx)
    try:
        yield fake
    finally:
        fake.close()
        ctx.term()


def _start(controller: FakeController, stop: threading.Event) -> tuple[threading.Thread, list]:
    config = StandbyConfig(7, (1, 3), controller.endpoint, poll_s=0.05, grace_s=0.3)
    result: list = []
    ctx = zmq.Context()

    def run() -> None:
        try:
            result.append(wait_for_takeover(ctx, config, stop.is_set))
        finally:
            ctx.term()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_takes_over_once_the_seen_owner_is_gone_for_the_grace_period(controller):
    stop = threading.Event()
    controller.endpoints = {1: "tcp://owner", 3: "tcp://owner"}
    thread, result = _start(controller, stop)
    time.sleep(0.5)
    assert not result, "took over containers that are served"
    controller.endpoints = {3: "tcp://owner"}  # one still served: wait
    time.sleep(0.5)
    assert not result
    gone_at = time.monotonic()
    controller.endpoints = {0: "tcp://other"}
    thread.join(timeout=10)
    assert result == [True]
    assert time.monotonic() - gone_at >= 0.3
    assert controller.beats and all(
        b.state == "standby" and b.endpoint == "" for b in controller.beats
    )
    assert controller.beats[0].containers == [1, 3]


@pytest.mark.parametrize("case", ["never_served", "silent_controller"])
def test_never_takes_over_without_seeing_the_owner_go(controller, case):
    stop = threading.Event()
    if case == "silent_controller":
        controller.endpoints = {1: "tcp://owner", 3: "tcp://owner"}
    thread, result = _start(controller, stop)
    time.sleep(0.3)
    if case == "silent_controller":
        controller.silent = True
        controller.endpoints = {}
    time.sleep(1.5)
    assert not result
    stop.set()
    thread.join(timeout=10)
    assert result == [False]


def test_config_is_checked():
    with pytest.raises(ValueError, match="controller"):
        StandbyConfig(0, (0,), "")
    with pytest.raises(ValueError, match="no containers"):
        StandbyConfig(0, (), "tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="poll_s"):
        StandbyConfig(0, (0,), "tcp://127.0.0.1:1", poll_s=3.0, grace_s=2.0)
