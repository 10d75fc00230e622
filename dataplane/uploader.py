"""The uploader: one process per host that moves sealed byte ranges of segments from the
shared cache to long-term storage.

Workers send `UploadChunk` (the cache blocks holding [start, end) of a segment and the
chunk name to use); a bounded pool of threads copies the bytes out of the shared cache
(checking each block's generation, so a reused block is never uploaded), compresses them
into independently decodable zstd frames and creates the chunk (storage.store_chunk:
bounded retries, idempotent by name), then answers `ChunkUploaded`. The worker records the
chunk in its durable log before it unpins the cache blocks; if this process dies at any
point the worker asks again (same name, same bytes) once it is back. It runs at a lower CPU
priority than the write path (`UPLOADER_NICE`).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.crashpoints import crash_point
from streamvault.client.protocol.errors import (
    InternalError,
    InvalidMessage,
    ServiceUnavailable,
    StreamVaultError,
)
from streamvault.dataplane.cache.shared_cache import BlockRef, SharedCache
from streamvault.dataplane.storage import store_chunk, thread_scratch
from streamvault.lts.uri import open_chunk_store

log = logging.getLogger(__name__)

UPLOADER_NICE = 10
"""The uploader's CPU priority (nice increment). Uploads are background work with the
shared cache as their buffer: under contention for the CPUs the worker's loop and the
bookies, whose latency a writer waits on, go first; a starved uploader fills the cache,
which throttles writers (slower acks), never loses data."""


class StaleCache(ServiceUnavailable):
    """A block was reused before it could be uploaded; the worker uploads from its log."""


@dataclass(frozen=True)
class UploaderConfig:
    bind: str
    cache_path: str
    lts: str
    s3_endpoint: str | None = None
    controller: str = ""
    threads: int = 2
    queued_max: int = 16


class Uploader:
    def __init__(self, config: UploaderConfig) -> None:
        self.config = config
        self.ctx = zmq.Context()
        self.cache = SharedCache.open(config.cache_path)
        self.store = open_chunk_store(config.lts, s3_endpoint=config.s3_endpoint)
        self.pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="upload")
        self.waker = transport.Waker()
        self.done: collections.deque[tuple[bytes, list[Any]]] = collections.deque()
        self.queued = 0
        self.stopping = False
        self.router = transport.server_socket(self.ctx)
        self.router.bind(config.bind)
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.incarnation = uuid.uuid4().hex
        self.uploaded = 0
        self.heartbeat = (
            transport.HeartbeatSender(self.ctx, config.controller) if config.controller else None
        )

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.waker.fd, zmq.POLLIN)
        log.info("uploader up endpoint=%s lts=%s", self.endpoint, self.config.lts)
        next_beat = 0.0
        while not self.stopping:
            now = time.monotonic()
            if self.heartbeat is not None and now >= next_beat:
                self.heartbeat.beat(
                    m.Heartbeat(
                        role="uploader",
                        id="0",
                        pid=os.getpid(),
                        endpoint=self.endpoint,
                        state="up",
                        info={
                            "uploaded": self.uploaded,
                            "queued": self.queued,
                            "lts": self.config.lts,
                        },
                    )
                )
                self.heartbeat.drain()
                next_beat = now + 1.0
            events = dict(poller.poll(500))
            if self.waker.fd in events:
                self.waker.drain()
            if self.router in events:
                self._receive()
            while self.done:
                peer, frames = self.done.popleft()
                self.queued -= 1
                try:
                    self.router.send_multipart([peer, *frames], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the worker is gone; it asks again after its restart
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.router.close(0)
        if self.heartbeat is not None:
            self.heartbeat.close()
        self.waker.close()
        self.cache.close()
        self.store.close()
        self.ctx.term()

    def _receive(self) -> None:
        for _ in range(1000):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer, body = frames[0].bytes, frames[1:]
            rid = 0
            try:
                header = codec.decode_header(body[0])
                rid = header.request_id
                _, msg = codec.decode(body)
                if isinstance(msg, m.Hello):
                    reply = codec.hello_reply(
                        msg, role="uploader", server_id="0", incarnation=self.incarnation
                    )
                    self._send(peer, codec.encode(reply, rid))
                    continue
                if not isinstance(msg, m.UploadChunk):
                    raise InvalidMessage(f"uploader: unexpected {type(msg).__name__}")
                if self.queued >= self.config.queued_max:
                    raise ServiceUnavailable(f"uploader: {self.queued} uploads queued")
                self.queued += 1
                self.pool.submit(self._upload, peer, rid, msg)
            except StreamVaultError as exc:
                self._send(peer, codec.encode_exception(rid, exc))

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        try:
            self.router.send_multipart([peer, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _upload(self, peer: bytes, rid: int, msg: m.UploadChunk) -> None:
        try:
            data = self._gather(msg)
            stored = store_chunk(self.store, msg.chunk, data)
            crash_point("after_chunk_put_before_meta")
            self.uploaded += 1
            reply = codec.encode_reply(
                m.ChunkUploaded(msg.chunk, msg.segment, msg.start, msg.end, stored), rid
            )
        except StreamVaultError as exc:
            log.warning("upload %s failed: %s", msg.chunk, exc)
            reply = codec.encode_exception(rid, exc)
        except Exception as exc:  # a bug: report it to the worker, keep serving
            log.exception("upload %s failed", msg.chunk)
            reply = codec.encode_exception(rid, InternalError(f"{type(exc).__name__}: {exc}"))
        self.done.append((peer, reply))
        self.waker.wake()

    def _gather(self, msg: m.UploadChunk) -> memoryview:
        """The range's bytes, copied once out of the cache into this thread's reusable
        buffer; every block's generation is checked after the copy, so a block reused
        meanwhile is never uploaded."""
        size = msg.end - msg.start
        if sum(length for *_, length in msg.refs) != size:
            raise InvalidMessage(f"upload {msg.chunk}: refs do not hold {size} bytes")
        out = thread_scratch("gathered").view(size)
        pos = 0
        for region, block, generation, offset, length in msg.refs:
            ref = BlockRef(region, block, generation)
            if not self.cache.copy_into(ref, offset, out[pos : pos + length]):
                raise StaleCache(f"upload {msg.chunk}: cache block {region}/{block} was reused")
            pos += length
        return out

    def request_stop(self) -> None:
        self.stopping = True
        self.waker.wake()


def _lower_priority(increment: int) -> None:
    """Nice every thread of this process by `increment` (Linux nice is per thread, and
    imports may have started some already, e.g. numpy's BLAS pool)."""
    target = os.getpriority(os.PRIO_PROCESS, 0) + increment
    for task in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), target)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def run(config: UploaderConfig) -> int:
    _lower_priority(UPLOADER_NICE)  # before our threads start: they inherit it
    uploader = Uploader(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: uploader.request_stop())
    uploader.serve_forever()
    return 0
