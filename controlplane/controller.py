"""The controller service: one ROUTER socket, cheap reads answered inline, workflows on one
background thread.

Reads (list scopes and streams, stream info, reader groups, the container map, status) and
heartbeats are answered on the loop thread from the metadata store and the process
registry. Anything that changes metadata runs on the single workflow thread (so workflows
never race), whose completions come back to the loop through a queue and a waker. At most
`workflows_queued_max` workflows wait; beyond that callers get `ServiceUnavailable`.
Unfinished workflows of a previous run are resumed in the background at start and retried
every `resume_interval_s` until they finish.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from streamvault.client.connection import SegmentClient
from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    InternalError,
    InvalidMessage,
    NoSuchReaderGroup,
    NoSuchScope,
    NoSuchStream,
    ServiceUnavailable,
    StreamVaultError,
    UnsupportedVersion,
)
from streamvault.client.protocol.naming import check_name, container_for, segment_name
from streamvault.controlplane.metadata import ACTIVE, MetadataStore
from streamvault.controlplane.registry import Registry
from streamvault.controlplane.streams import Workflows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerConfig:
    data_dir: str
    bind: str = "tcp://127.0.0.1:9090"
    container_count: int = 0
    """Fixed at cluster creation; 0 = use the stored count."""
    workflows_queued_max: int = 1000
    workflow_call_deadline_s: float = 20.0
    resume_interval_s: float = 5.0

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.data_dir, "controller", "metadata.db")


_MUTATIONS = (
    m.CreateScope,
    m.DeleteScope,
    m.CreateStream,
    m.SealStream,
    m.DeleteStream,
    m.CreateReaderGroup,
    m.DeleteReaderGroup,
    m.TruncateStream,
)


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.incarnation = uuid.uuid4().hex
        self.ctx = zmq.Context()
        self.store = MetadataStore(config.metadata_path)
        self.container_count = self.store.container_count(config.container_count)
        if self.container_count <= 0:
            raise ValueError("container_count must be given when the cluster is created")
        self.registry = Registry()
        self.waker = transport.Waker()
        self.done: collections.deque[tuple[bytes, int, Any]] = collections.deque()
        self.queued = 0
        self.stopping = False
        self._local = threading.local()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflow")
        self.router = transport.server_socket(self.ctx)
        self.router.bind(config.bind)
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._resume_pending: Future | None = None
        self._next_resume = 0.0

    # --- routing for workflows --------------------------------------------------------
    def endpoint_for(self, segment: str, *, refresh: bool = False) -> str:
        container = container_for(segment, self.container_count)
        endpoint = self.registry.container_endpoints().get(container)
        if endpoint is None:
            raise ServiceUnavailable(
                f"no worker serves container {container} yet", container=container
            )
        return endpoint

    def _workflows(self) -> Workflows:
        wf = getattr(self._local, "workflows", None)
        if wf is None:
            store = MetadataStore(self.config.metadata_path)
            segments = SegmentClient(self.ctx, self.endpoint_for)
            wf = self._local.workflows = Workflows(
                store, segments, call_deadline_s=self.config.workflow_call_deadline_s
            )
        return wf

    # --- loop --------------------------------------------------------------------------
    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        log.info("controller up endpoint=%s containers=%d", self.endpoint, self.container_count)
        while not self.stopping:
            events = dict(poller.poll(200))
            if self.waker.fd in events:
                self.waker.drain()
            if self.router in events:
                for _ in range(1000):
                    try:
                        frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames[0].bytes, frames[1:])
            while self.done:
                peer, rid, reply = self.done.popleft()
                self.queued -= 1
                self._send(
                    peer, reply if isinstance(reply, list) else codec.encode_reply(reply, rid)
                )
            self._maybe_resume()
        self._shutdown()

    def _maybe_resume(self) -> None:
        now = time.monotonic()
        if now < self._next_resume or (self._resume_pending and not self._resume_pending.done()):
            return
        self._next_resume = now + self.config.resume_interval_s
        if self.store.unfinished_streams() or self.store.unfinished_reader_groups():
            self._resume_pending = self.executor.submit(self._resume)

    def _resume(self) -> None:
        try:
            self._workflows().resume_unfinished()
        except StreamVaultError as exc:
            log.info("resuming unfinished workflows: %s (will retry)", exc)

    def _handle(self, peer: bytes, frames: list[Any]) -> None:
        rid = 0
        try:
            header = codec.decode_header(frames[0])
            rid = header.request_id
            _, msg = codec.decode(frames)
            reply = self._dispatch(peer, rid, msg)
        except UnsupportedVersion as exc:
            reply = codec.encode_exception(exc.fields.get("request_id", rid), exc)
        except StreamVaultError as exc:
            reply = codec.encode_exception(rid, exc)
        except Exception as exc:
            log.exception("controller: request failed")
            reply = codec.encode_exception(rid, InternalError(f"{type(exc).__name__}: {exc}"))
        if reply is not None:
            self._send(peer, reply)

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        try:
            self.router.send_multipart([peer, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone; it will retry

    def _dispatch(self, peer: bytes, rid: int, msg: Any) -> list[Any] | None:
        if isinstance(msg, m.Heartbeat):
            self.registry.beat(msg)
            return codec.encode_reply(m.Done(), rid)
        if isinstance(msg, _MUTATIONS):
            self._submit(peer, rid, msg)
            return None
        if isinstance(msg, m.Hello):
            reply = codec.hello_reply(
                msg, role="controller", server_id="0", incarnation=self.incarnation
            )
            return codec.encode(reply, rid)
        return codec.encode_reply(self._read(msg), rid)

    def _read(self, msg: Any) -> m.Control:
        store = self.store
        if isinstance(msg, m.GetContainerMap):
            return m.ContainerMap(self.container_count, self.registry.container_endpoints())
        if isinstance(msg, m.GetStatus):
            return m.Status(self._processes())
        if isinstance(msg, m.ListScopes):
            return m.Names(store.list_scopes())
        if isinstance(msg, m.ListStreams):
            check_name("scope", msg.scope)
            if not store.scope_exists(msg.scope):
                raise NoSuchScope(f"scope {msg.scope} does not exist", scope=msg.scope)
            return m.Names(store.list_streams(msg.scope))
        if isinstance(msg, m.GetStream):
            check_name("scope", msg.scope, internal_ok=True)
            check_name("stream", msg.stream, internal_ok=True)
            state = store.stream_state(msg.scope, msg.stream)
            if state is None or state == "CREATING":
                if not store.scope_exists(msg.scope):
                    raise NoSuchScope(f"scope {msg.scope} does not exist", scope=msg.scope)
                raise NoSuchStream(
                    f"stream {msg.scope}/{msg.stream} does not exist", stream=msg.stream
                )
            ranges = [
                m.SegmentRange(
                    segment_name(msg.scope, msg.stream, r.segment_id), r.key_low, r.key_high
                )
                for r in store.segments(msg.scope, msg.stream)
            ]
            return m.StreamInfo(msg.scope, msg.stream, state, ranges)
        if isinstance(msg, m.GetReaderGroup):
            row = store.reader_group(msg.scope, msg.group)
            if row is None or row.state != ACTIVE:
                raise NoSuchReaderGroup(
                    f"reader group {msg.scope}/{msg.group} does not exist", group=msg.group
                )
            return m.ReaderGroupInfo(
                row.scope,
                row.group,
                row.streams,
                row.from_tail,
                Workflows.state_segment(row.scope, row.group),
            )
        raise InvalidMessage(f"controller: unexpected message {type(msg).__name__}")

    def _processes(self) -> list[m.ProcessInfo]:
        me = m.ProcessInfo(
            role="controller",
            id="0",
            pid=os.getpid(),
            endpoint=self.endpoint,
            state="up",
            info={"container_count": self.container_count},
        )
        return (
            [p for p in self.registry.processes() if p.role == "standalone"]
            + [me]
            + [p for p in self.registry.processes() if p.role != "standalone"]
        )

    def _submit(self, peer: bytes, rid: int, msg: Any) -> None:
        if self.queued >= self.config.workflows_queued_max:
            raise ServiceUnavailable(f"controller: {self.queued} workflows queued; retry later")
        self.queued += 1
        self.executor.submit(self._run_workflow, peer, rid, msg)

    def _run_workflow(self, peer: bytes, rid: int, msg: Any) -> None:
        try:
            wf = self._workflows()
            if isinstance(msg, m.CreateScope):
                changed = wf.create_scope(msg.scope)
            elif isinstance(msg, m.DeleteScope):
                changed = wf.delete_scope(msg.scope)
            elif isinstance(msg, m.CreateStream):
                changed = wf.create_stream(msg.scope, msg.stream, msg.initial_segments)
            elif isinstance(msg, m.SealStream):
                changed = wf.seal_stream(msg.scope, msg.stream)
            elif isinstance(msg, m.DeleteStream):
                changed = wf.delete_stream(msg.scope, msg.stream)
            elif isinstance(msg, m.TruncateStream):
                changed = wf.truncate_stream(msg.scope, msg.stream, msg.cut)
            elif isinstance(msg, m.CreateReaderGroup):
                changed = wf.create_reader_group(msg.scope, msg.group, msg.streams, msg.from_tail)
            else:
                changed = wf.delete_reader_group(msg.scope, msg.group)
            reply: Any = m.Done(changed=changed)
        except StreamVaultError as exc:
            reply = codec.encode_exception(rid, exc)
        except Exception as exc:
            log.exception("controller: workflow %s failed", type(msg).__name__)
            reply = codec.encode_exception(rid, InternalError(f"{type(exc).__name__}: {exc}"))
        self.done.append((peer, rid, reply))
        self.waker.wake()

    def request_stop(self) -> None:
        self.stopping = True
        self.waker.wake()

    def _shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.router.close(0)
        self.waker.close()
        self.store.close()
        self.ctx.term()
        log.info("controller stopped")


def run(config: ControllerConfig) -> int:
    controller = Controller(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: controller.request_stop())
    controller.serve_forever()
    return 0
