"""A worker's link to long-term storage: uploads, reads of evicted history, orphan cleanup.

- Uploads: each tick asks every container which segments are due (container.uploads_due);
  a range whose bytes all sit in the shared cache goes to the host's uploader as
  `UploadChunk` (block references, no copy); a range the cache could not hold is read from
  the durable log here and stored by this worker's pool. Either way the container logs the
  chunk (`uploaded`) before anything is unpinned; a failure or a silent uploader
  (`upload_timeout_s`) makes the segment due again later. At most one upload per segment.
- Reads below a segment's storage length that the cache no longer holds are served from
  LTS by the pool (chunk index and decompressed frames cached, storage.ChunkReader).
- After recovery, chunks no segment refers to that an older epoch wrote are deleted.

Pool results come back to the worker's loop through `post` (closures run on the loop), so
containers are only ever touched by the loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.codec import next_request_id
from streamvault.client.protocol.crashpoints import crash_point
from streamvault.client.protocol.errors import (
    Fenced,
    StorageError,
    StreamVaultError,
    error_from_code,
)
from streamvault.dataplane.container import Container
from streamvault.dataplane.container.container import LtsRead
from streamvault.dataplane.container.tiering import UploadTask
from streamvault.dataplane.log import LocalDurableLog
from streamvault.dataplane.storage import ChunkReader, StoredFrames, collect_orphans, store_chunk
from streamvault.lts.chunk_store import ChunkStore

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT_S = 120.0
TICK_INTERVAL_S = 0.05
POOL_THREADS = 1


class StorageWriter:
    def __init__(
        self,
        ctx: zmq.Context,
        *,
        store: ChunkStore,
        uploader: str,
        containers: dict[int, Container],
        logs: dict[int, LocalDurableLog],
        post: Callable[[Callable[[], None]], None],
    ) -> None:
        self.store = store
        self.containers = containers
        self.logs = logs
        self.post = post
        self.reader = ChunkReader(store)
        self.pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="lts")
        self.sock = transport.client_socket(ctx, uploader) if uploader else None
        # a dead uploader fails its outstanding uploads at once (they are asked again)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED) if self.sock else None
        self.outstanding: dict[int, tuple[Container, UploadTask, float]] = {}
        self.next_tick = 0.0
        self.counters = {
            "uploads": 0,
            "upload_failures": 0,
            "log_uploads": 0,
            "lts_reads": 0,
            "lts_zstd_reads": 0,  # of which answered with the chunk's stored zstd frames
            "orphans_deleted": 0,
        }

    # --- uploads ---------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if now < self.next_tick:
            return
        self.next_tick = now + TICK_INTERVAL_S
        for rid, (container, task, deadline) in list(self.outstanding.items()):
            if now >= deadline:
                del self.outstanding[rid]
                log.warning(
                    "upload %s: no answer in %.0fs; will retry", task.chunk, UPLOAD_TIMEOUT_S
                )
                container.upload_failed(task.segment_id, task.end)
        for cid, container in self.containers.items():
            for task in container.uploads_due(now):
                if task.refs is not None and self.sock is not None:
                    self._send(container, task, now)
                else:
                    self._upload_from_log(cid, container, task)

    def _send(self, container: Container, task: UploadTask, now: float) -> None:
        assert self.sock is not None and task.refs is not None
        rid = next_request_id()
        refs = [
            (ref.region, ref.block, ref.generation, offset, length)
            for ref, offset, length in task.refs
        ]
        body = m.UploadChunk(
            container=container.container_id,
            epoch=container.epoch,
            segment=task.segment.decode(),
            start=task.start,
            end=task.end,
            chunk=task.chunk,
            refs=refs,
        )
        self.sock.send_multipart(codec.encode(body, rid), zmq.NOBLOCK)
        self.outstanding[rid] = (container, task, now + UPLOAD_TIMEOUT_S)

    def _upload_from_log(self, cid: int, container: Container, task: UploadTask) -> None:
        """The cache does not hold the whole range: read it from the durable log and store
        it from this worker's pool."""
        seg = container.by_id.get(task.segment_id)
        if seg is None:
            return
        dlog = self.logs[cid]
        try:
            data = b"".join(
                dlog.read(p.ledger_id, p.position, p.length)
                for p in seg.pieces(task.start, task.end)
            )
        except (Fenced, StorageError):
            raise  # not the owner any more, or an I/O error: the worker fail-stops
        except StreamVaultError as exc:  # a bookie did not answer: try again later
            self._failed(container, task, exc)
            return
        if len(data) != task.end - task.start:  # the index ends early: try again later
            container.upload_failed(task.segment_id, task.end)
            return
        self.counters["log_uploads"] += 1

        def job() -> None:
            try:
                stored = store_chunk(self.store, task.chunk, data)
                self.post(lambda: self._done(container, task, stored))
            except StreamVaultError as exc:
                self.post(lambda exc=exc: self._failed(container, task, exc))

        self.pool.submit(job)

    def on_disconnect(self) -> None:
        assert self.monitor is not None
        while True:
            try:
                recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
        for container, task, _ in self.outstanding.values():
            container.upload_failed(task.segment_id, task.end)
        if self.outstanding:
            log.info("uploader disconnected: %d uploads will be asked again", len(self.outstanding))
        self.outstanding.clear()

    def on_readable(self) -> None:
        assert self.sock is not None
        for header, body in transport.replies(self.sock):
            entry = self.outstanding.pop(header.request_id, None)
            if entry is None:
                continue
            container, task, _ = entry
            if isinstance(body, m.ChunkUploaded):
                self._done(container, task, body.stored_bytes)
            elif isinstance(body, m.ErrorReply):
                self._failed(container, task, error_from_code(body.code, body.message, body.fields))

    def _done(self, container: Container, task: UploadTask, stored_bytes: int) -> None:
        crash_point("before_chunk_meta")
        self.counters["uploads"] += 1
        container.uploaded(task.segment_id, task.start, task.end, task.chunk, stored_bytes)

    def _failed(self, container: Container, task: UploadTask, exc: BaseException) -> None:
        self.counters["upload_failures"] += 1
        log.info("upload %s failed: %s", task.chunk, exc)
        container.upload_failed(task.segment_id, task.end)

    # --- reads -----------------------------------------------------------------------------
    def read(
        self,
        lts: LtsRead,
        reply: Callable[[memoryview | StoredFrames | None, BaseException | None], None],
        *,
        frames: bool = False,
    ) -> None:
        """Read from LTS in the pool; `reply(data, error)` runs on the worker's loop. With
        `frames` the data may come as the chunk's stored zstd frames (`StoredFrames`), for a
        reader that decompresses them itself: then this worker neither decodes them nor
        sends the decoded bytes."""
        self.counters["lts_reads"] += 1
        reader = self.reader

        def job() -> None:
            try:
                data: memoryview | StoredFrames | None = None
                if frames:
                    data = reader.read_frames(lts.chunk, lts.stored_bytes, lts.offset, lts.length)
                if data is None:
                    data = reader.read(lts.chunk, lts.stored_bytes, lts.offset, lts.length)
                self.post(lambda: reply(data, None))
            except Exception as exc:  # reported to the reader as an error
                self.post(lambda exc=exc: reply(None, exc))

        self.pool.submit(job)

    # --- cleanup ---------------------------------------------------------------------------
    def collect_orphans(self, container: Container) -> None:
        referenced = {c.name for seg in container.by_id.values() for c in seg.chunks}
        cid, epoch = container.container_id, container.epoch

        def job() -> None:
            try:
                deleted = collect_orphans(self.store, cid, referenced, epoch)
                if deleted:
                    log.info("container=%d deleted %d orphaned chunks", cid, len(deleted))
                    self.post(
                        lambda: self.counters.__setitem__(
                            "orphans_deleted", self.counters["orphans_deleted"] + len(deleted)
                        )
                    )
            except StreamVaultError as exc:
                log.warning("container=%d orphan collection failed: %s", cid, exc)

        self.pool.submit(job)

    def delete_chunks(self, names: list[str]) -> None:
        def job() -> None:
            for name in names:
                try:
                    self.store.delete(name)
                    self.reader.forget(name)
                except StreamVaultError as exc:
                    log.warning("chunk %s not deleted: %s (collected later)", name, exc)

        if names:
            self.pool.submit(job)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.sock is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.sock.close(0)
        self.store.close()

    def info(self) -> dict[str, Any]:
        return {**self.counters, "uploads_in_flight": len(self.outstanding)}
