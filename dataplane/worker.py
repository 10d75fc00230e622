"""A worker: one per core, the ZeroMQ loop in front of its segment containers.

The worker owns a ROUTER socket, the containers it was given, one durable log per container
and what those logs share to make records durable: the `Committer` thread (local ledger
files, replication factor 1, whose fdatasync blocks) or, when the config names bookies, the
`Replicator` (each record a ledger entry on an ensemble of bookies, complete at the ack
quorum), whose bookie sockets the loop polls itself: nothing blocks, so no thread is needed.
Its single loop:

1. receives a bounded batch of messages (stops reading while queued append bytes exceed
   `queued_bytes_max`: throttling, not unbounded buffering), decodes each and dispatches it
   to the owning container (or answers `WrongHost`, or a typed error for bad input);
2. lets every container with queued operations build its next log record and submits it
   (pipelined: up to `LogConfig.buffers` records per container in flight);
3. applies the completions in order (the replicator's taken from the bookie sockets in the
   same turn): acks, replies, tail reads;
4. expires long-polling reads and heartbeats the controller.

An I/O error from the committer is fail-stop: the process exits at once without sending a
single further ack; the host restarts it and the containers recover from their logs.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from streamvault.client.protocol import codec, transport
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    DataCorruption,
    Fenced,
    InternalError,
    InvalidMessage,
    StorageError,
    StreamVaultError,
    UnsupportedVersion,
    WrongHost,
)
from streamvault.client.protocol.latency import summaries
from streamvault.client.protocol.limits import (
    INVALID_MESSAGES_BEFORE_DISCONNECT,
)
from streamvault.client.protocol.naming import container_for
from streamvault.dataplane.cache import BlockRing, SharedCache
from streamvault.dataplane.cache.segment_cache import SegmentCache
from streamvault.dataplane.container import Container, ReadPlan
from streamvault.dataplane.container.recovery import recover as recover_container
from streamvault.dataplane.container.tiering import TieringConfig
from streamvault.dataplane.log import Committer, LocalDurableLog, LocalFileStore, LogConfig
from streamvault.dataplane.log.bookie_client import await_hellos
from streamvault.dataplane.log.bookie_instance import InstanceRound
from streamvault.dataplane.log.probe import durability_mode
from streamvault.dataplane.log.replicated_log import (
    INSTANCE_ROUND_REUSE_S,
    ReplicatedLog,
    ReplicationConfig,
)
from streamvault.dataplane.log.replicator import Replicator
from streamvault.dataplane.standby import StandbyConfig, wait_for_takeover
from streamvault.dataplane.storage import StoredFrames
from streamvault.dataplane.storage_writer import StorageWriter
from streamvault.lts.uri import open_chunk_store

log = logging.getLogger(__name__)

RECEIVE_BATCH_MAX = 1024
"""Messages taken from the socket per loop turn before flushing and completing."""
EXPIRE_INTERVAL_S = 0.05
HEARTBEAT_INTERVAL_S = 1.0
EXIT_STORAGE_FAILURE = 3
PEER_IDLE_S = 600.0
"""Per-connection state (writer sessions, bad-input counts) of a peer silent this long is
dropped; a writer that comes back repeats SetupAppend (ROUTER_NOTIFY, which would tell us
about disconnects, is a draft API in libzmq 4.3)."""
PEERS_MAX = 10_000
SWEEP_INTERVAL_S = 10.0
IDLE_CHECK_INTERVAL_S = 1.0
"""How often containers are checked for an idle checkpoint (Container.idle_checkpoint_due)."""
GIL_SWITCH_INTERVAL_S = 0.0005
CACHE_POPULATE_NICE = 10
"""Nice increment of the thread that faults in the worker's cache region at start."""
THROTTLE_DELAY_S_MAX = 0.02
"""While throttling, the socket is read at most every (1 - credit) x this."""
BOOKIES_WAIT_S = 30.0
"""How long a replicated worker waits at start for a quorum of bookies to answer."""


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: int
    data_dir: str
    containers: tuple[int, ...]
    container_count: int
    bind: str = "tcp://127.0.0.1:*"
    controller: str = ""
    cpu: int | None = None
    allow_direct_io: bool = True
    queued_bytes_max: int = 64 * 1024 * 1024
    log: LogConfig = field(default_factory=LogConfig)
    cache_path: str = ""
    """The host's shared cache file; this worker writes region `worker_id` of it."""
    lts: str = ""
    """Chunk store spec (`file:DIR`, `s3://BUCKET[/PREFIX]`); empty: no LTS (nothing unpins)."""
    s3_endpoint: str | None = None
    uploader: str = ""
    tiering: TieringConfig = field(default_factory=TieringConfig)
    replication: ReplicationConfig | None = None
    """Bookies and quorums of a replicated log; None: local ledger files (one replica)."""
    standby: bool = False
    """Open the containers only once no live worker serves them (standby.py): a failover
    target sharing the owner's coordination store, bookies and LTS."""

    def __post_init__(self) -> None:
        if self.container_count <= 0:
            raise ValueError(f"container_count={self.container_count} must be > 0")
        bad = [c for c in self.containers if not 0 <= c < self.container_count]
        if bad:
            raise ValueError(f"containers {bad} not in 0..{self.container_count - 1}")
        if len(set(self.containers)) != len(self.containers):
            raise ValueError(f"containers {self.containers} repeat")
        if self.standby and not self.controller:
            raise ValueError("standby needs a controller (--controller) to see the owner go")
        if self.standby and self.replication is None:
            raise ValueError(
                "standby needs a replicated log (--bookies): local ledger files are not "
                "shared with the owner"
            )


def log_dir(data_dir: str, container_id: int) -> str:
    return os.path.join(data_dir, "log", f"container-{container_id:04d}")


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.incarnation = uuid.uuid4().hex
        self.ctx = zmq.Context()
        self.waker = transport.Waker()
        self.completions: collections.deque[Any] = collections.deque()
        self.fatal: BaseException | None = None
        self.stopping = False
        self.committer: Committer | Replicator = (
            Replicator(
                self.ctx,
                config.replication,
                self.completions.extend,  # inline: delivered on the loop thread itself
                self._on_fatal,
                threaded=False,
            )
            if config.replication is not None
            else Committer(self._deliver, self._on_fatal)
        )
        self.instance_round = InstanceRound(INSTANCE_ROUND_REUSE_S, time.monotonic)
        """The bookies' instances, asked once for the containers recovering in a row."""
        self.containers: dict[int, Container] = {}
        self.failed: dict[int, DataCorruption] = {}
        self.logs: dict[int, LocalDurableLog | ReplicatedLog] = {}
        self.peer_seen: dict[bytes, float] = {}
        self.invalid_counts: dict[bytes, int] = {}
        self.ignored_peers: set[bytes] = set()
        self.dropped_sends = 0
        self.router: zmq.Socket | None = None
        self.endpoint = ""
        self.mode = ""
        self.state = "starting"
        self.now = time.monotonic()
        self._controller: transport.HeartbeatSender | None = None
        self.cache: SharedCache | None = None
        self._populate_stop = threading.Event()
        self.ring: BlockRing | None = None
        self.segment_cache: SegmentCache | None = None
        self.storage: StorageWriter | None = None
        self.posted: collections.deque[Callable[[], None]] = collections.deque()

    # --- committer callbacks (committer thread) -------------------------------------------
    def _deliver(self, done: list[Any]) -> None:
        self.completions.extend(done)
        self.waker.wake()

    def _on_fatal(self, exc: BaseException) -> None:
        self.fatal = exc
        self.waker.wake()

    def _post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread (from the storage pool)."""
        self.posted.append(fn)
        self.waker.wake()

    # --- start ---------------------------------------------------------------------------
    def _populate_cache(self) -> None:
        """Fault in this worker's cache region (SharedCache.populate) on a thread of its own
        at nice +CACHE_POPULATE_NICE, beside recovery and the first appends; a worker that
        stops first leaves the rest to fault in as written."""
        assert self.cache is not None and self.ring is not None
        tid = threading.get_native_id()
        try:
            os.setpriority(
                os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + CACHE_POPULATE_NICE
            )
        except OSError:
            pass
        started = time.monotonic()
        if self.cache.populate(self.ring.region, stop=self._populate_stop):
            log.info("worker: cache region populated in %.2fs", time.monotonic() - started)
        else:
            log.info("worker: cache region not populated (madvise refused); pages fault in")

    def open(self) -> None:
        cfg = self.config
        log_root = os.path.join(cfg.data_dir, "log")
        os.makedirs(log_root, exist_ok=True)
        if cfg.replication is None:
            self.mode = durability_mode(log_root, allow_direct=cfg.allow_direct_io)
        store = LocalFileStore(os.path.join(cfg.data_dir, "coordination"))
        if cfg.cache_path:
            self.cache = SharedCache.open(cfg.cache_path)
            self.ring = BlockRing(self.cache, cfg.worker_id % self.cache.regions)
            self.segment_cache = SegmentCache(self.ring)
            threading.Thread(
                target=self._populate_cache, name="cache-populate", daemon=True
            ).start()
        started = time.monotonic()
        if cfg.replication is not None:
            self._await_bookies(cfg.replication)
        for cid in cfg.containers:
            container = Container(
                cid,
                frame_payload_bytes=cfg.log.frame_payload_bytes,
                cache=self.segment_cache,
                tiering=cfg.tiering,
                checkpoint_bytes=cfg.log.ledger_bytes // 2,
            )
            dlog = self._log(cid, store)
            try:
                recovered = recover_container(container, dlog)
            except DataCorruption as exc:
                # Stop this container only; the worker goes on serving its other ones, and
                # every request for this one is answered with the error until an operator
                # repairs the log (a replica repairs it once the log is replicated).
                log.critical("worker=%d container=%d stopped: %s", cfg.worker_id, cid, exc)
                self.failed[cid] = exc
                dlog.close()
                continue
            records = recovered.records
            dlog.start()
            container.finish_recovery(epoch=dlog.epoch, now=time.monotonic())
            self.containers[cid] = container
            self.logs[cid] = dlog
            log.info(
                "worker=%d container=%d recovered records=%d segments=%d epoch=%d "
                "scan_s=%.3f replay_s=%.3f",
                cfg.worker_id,
                cid,
                records,
                len(container.segments),
                dlog.epoch,
                recovered.scan_s,
                recovered.replay_s,
            )
        self.committer.start()
        if cfg.lts:
            self.storage = StorageWriter(
                self.ctx,
                store=open_chunk_store(cfg.lts, s3_endpoint=cfg.s3_endpoint),
                uploader=cfg.uploader,
                containers=self.containers,
                logs=self.logs,
                post=self._post,
            )
            for container in self.containers.values():
                self.storage.collect_orphans(container)
        self.router = transport.server_socket(self.ctx)
        self.router.bind(cfg.bind)
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        if cfg.controller:
            self._controller = transport.HeartbeatSender(self.ctx, cfg.controller)
        self.state = "up"
        log.info(
            "worker=%d up endpoint=%s containers=%s durability_mode=%s recovery_s=%.3f",
            cfg.worker_id,
            self.endpoint,
            list(cfg.containers),
            self.mode,
            time.monotonic() - started,
        )

    def _await_bookies(self, replication: ReplicationConfig) -> None:
        """Before recovery, wait (at most `BOOKIES_WAIT_S`) until enough bookies answer to
        fence, read and open a ledger: the standalone starts its bookies and this host at
        once, and a bookie replaying its journal answers only when it is done. Recovery
        itself then waits its instance round (1 s) for the others; when all answered here,
        their instances are that round's."""
        endpoints = list(replication.bookies.values())
        needed = min(len(endpoints), max(replication.fence_quorum, replication.ack_quorum))
        seen = await_hellos(
            self.ctx,
            endpoints,
            needed=needed,
            deadline_s=BOOKIES_WAIT_S,
            who=f"worker {self.config.worker_id}",
        )
        if len(seen) == len(endpoints):
            self.instance_round.put(endpoints, {e: r.instance for e, r in seen.items()})
        elif len(seen) < needed:
            log.warning(
                "worker=%d only %d of %d bookies answered in %.0fs; recovering anyway",
                self.config.worker_id,
                len(seen),
                len(endpoints),
                BOOKIES_WAIT_S,
            )

    # --- loop ----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        assert self.router is not None
        poller_in = zmq.Poller()
        poller_in.register(self.router, zmq.POLLIN)
        poller_throttled = zmq.Poller()
        for poller in (poller_in, poller_throttled):
            poller.register(self.waker.fd, zmq.POLLIN)
            for sock in self._bookie_sockets():  # acks are taken even while throttled
                poller.register(sock, zmq.POLLIN)
            if self._controller is not None:
                poller.register(self._controller.sock, zmq.POLLIN)
            if self.storage is not None and self.storage.sock is not None:
                poller.register(self.storage.sock, zmq.POLLIN)
                poller.register(self.storage.monitor, zmq.POLLIN)
        next_expire = time.monotonic() + EXPIRE_INTERVAL_S
        next_heartbeat = 0.0
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        next_idle_check = time.monotonic() + IDLE_CHECK_INTERVAL_S
        next_receive = 0.0
        while not self.stopping:
            now = time.monotonic()
            credit = self._credit()
            accept = credit > 0 and self._queued_bytes() <= self.config.queued_bytes_max
            timers = [next_expire, next_heartbeat]
            if self.storage is not None:
                timers.append(self.storage.next_tick)
            if accept and now < next_receive:
                timers.append(next_receive)
                accept = False
            poller = poller_in if accept else poller_throttled
            events = dict(poller.poll(max(0, int((min(timers) - now) * 1000))))
            if self.fatal is not None:
                self._fail_stop()
            if self.waker.fd in events:
                self.waker.drain()
            if self.router in events:
                self.now = time.monotonic()
                self._receive(max(1, int(RECEIVE_BATCH_MAX * credit)))
                if credit < 1.0:  # throttling: acks slow down, nothing is refused
                    next_receive = self.now + (1.0 - credit) * THROTTLE_DELAY_S_MAX
            self._replicate(events)
            self._complete()
            self._flush()
            self._replicate(())  # the records just built go out in this turn
            self._run_posted()
            now = time.monotonic()
            if self.storage is not None:
                if self.storage.sock is not None and self.storage.sock in events:
                    self.storage.on_readable()
                if self.storage.monitor is not None and self.storage.monitor in events:
                    self.storage.on_disconnect()
                try:
                    self.storage.tick(now)
                except (Fenced, StorageError) as exc:  # an upload's log read: not the owner
                    self.fatal = exc  # any more, or an I/O error
                    self._fail_stop()
                self._collect_garbage()
            if now >= next_expire:
                for container in self.containers.values():
                    self._send_plans(container.expire_reads(now))
                next_expire = now + EXPIRE_INTERVAL_S
            if now >= next_sweep:
                self._sweep_peers(now)
                next_sweep = now + SWEEP_INTERVAL_S
            if now >= next_idle_check:
                self._checkpoint_idle(now)
                next_idle_check = now + IDLE_CHECK_INTERVAL_S
            if self._controller is not None:
                if self._controller.sock in events:
                    self._controller.drain()
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + HEARTBEAT_INTERVAL_S
        self._shutdown()

    def _bookie_sockets(self) -> list[zmq.Socket]:
        return self.committer.sockets if isinstance(self.committer, Replicator) else []

    def _replicate(self, ready: Any) -> None:
        """One turn of the inline replicator (sends what was submitted, takes the acks
        waiting on the bookie sockets in `ready`); a refusal is fail-stop."""
        if not isinstance(self.committer, Replicator):
            return
        try:
            self.committer.pump(ready)
        except BaseException as exc:  # Fenced or another refusal: acknowledge nothing more
            log.critical("replicator: failure, nothing more is acknowledged: %r", exc)
            self.fatal = exc
            self._fail_stop()

    def _credit(self) -> float:
        """1.0 while the cache has room; falls to 0.0 as its pinned share (plus what is
        queued for it) goes from 75 % to 90 %. Checked per message, so at most one message
        overshoots; bytes the cache cannot take are served from the log until uploaded."""
        ring = self.ring
        if ring is None or self.storage is None:
            return 1.0
        queued_blocks = -(-self._queued_bytes() // ring.cache.block_bytes)
        used = (ring.pinned + queued_blocks) / ring.total
        if used <= ring.throttle_from:
            return 1.0
        if used >= ring.stop_at:
            return 0.0
        return (ring.stop_at - used) / (ring.stop_at - ring.throttle_from)

    def _run_posted(self) -> None:
        while self.posted:
            self.posted.popleft()()

    def _collect_garbage(self) -> None:
        assert self.storage is not None
        for container in self.containers.values():
            if container.garbage:
                self.storage.delete_chunks(container.garbage)
                container.garbage = []

    def _queued_bytes(self) -> int:
        return sum(c.queued_bytes for c in self.containers.values())

    def _receive(self, batch_max: int = RECEIVE_BATCH_MAX) -> None:
        router = self.router
        assert router is not None
        for count in range(batch_max):
            if count % 16 == 15 and self._credit() == 0.0:
                return  # the cache is full: leave the rest in the socket (backpressure)
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer = frames[0].bytes
            if peer in self.ignored_peers:
                continue
            if peer not in self.peer_seen and len(self.peer_seen) >= PEERS_MAX:
                self._forget_peer(min(self.peer_seen, key=self.peer_seen.__getitem__))
            self.peer_seen[peer] = self.now
            self._handle(peer, frames[1:])

    def _sweep_peers(self, now: float) -> None:
        for peer, seen in list(self.peer_seen.items()):
            if now - seen > PEER_IDLE_S:
                self._forget_peer(peer)

    def _forget_peer(self, peer: bytes) -> None:
        self.peer_seen.pop(peer, None)
        self.invalid_counts.pop(peer, None)
        self.ignored_peers.discard(peer)
        for container in self.containers.values():
            container.peer_gone(peer)

    def _handle(self, peer: bytes, frames: list[Any]) -> None:
        rid = 0
        try:
            header = codec.decode_header(frames[0])
            rid = header.request_id
            _, msg = codec.decode(frames)
            reply = self._dispatch(peer, rid, header, msg)
        except UnsupportedVersion as exc:
            self._invalid(peer, exc.fields.get("request_id", rid), exc)
            return
        except InvalidMessage as exc:
            self._invalid(peer, rid, exc)
            return
        except StreamVaultError as exc:
            reply = codec.encode_exception(rid, exc)
        except AssertionError:
            raise
        except Exception as exc:  # a bug: answer, log, keep serving the other peers
            log.exception("worker=%d request failed peer=%s", self.config.worker_id, peer.hex())
            reply = codec.encode_exception(rid, InternalError(f"{type(exc).__name__}: {exc}"))
        if reply is not None:
            self._send(peer, reply)

    def _invalid(self, peer: bytes, rid: int, exc: StreamVaultError) -> None:
        count = self.invalid_counts.get(peer, 0) + 1
        self.invalid_counts[peer] = count
        self._send(peer, codec.encode_exception(rid, exc))
        if count >= INVALID_MESSAGES_BEFORE_DISCONNECT:
            log.warning(
                "worker=%d peer=%s sent %d invalid messages: no longer answered",
                self.config.worker_id,
                peer.hex(),
                count,
            )
            self.ignored_peers.add(peer)

    def _container(self, name: bytes) -> Container:
        cid = container_for(name, self.config.container_count)
        container = self.containers.get(cid)
        if container is None:
            if cid in self.failed:
                exc = self.failed[cid]
                raise DataCorruption(f"container {cid} is stopped: {exc.message}", container=cid)
            raise WrongHost(
                f"segment {name.decode()} is in container {cid}, not on worker "
                f"{self.config.worker_id}",
                container=cid,
            )
        return container

    def _dispatch(self, peer: bytes, rid: int, header: m.Header, msg: Any) -> list[Any] | None:
        if isinstance(msg, m.AppendBlock):
            size = codec._nbytes(msg.payload)
            return self._container(msg.segment).append(peer, rid, msg, size)
        if isinstance(msg, m.ReadSegment):
            plan = self._container(msg.segment).read(peer, rid, msg, time.monotonic())
            if plan is not None:
                if plan.lts is not None and header.flags & codec.FLAG_ZSTD_OK:
                    plan = plan._replace(zstd=True)
                self._send_plans([plan])
            return None
        if isinstance(msg, m.SetupAppend):
            return self._container(msg.segment).setup_append(peer, rid, msg)
        if isinstance(msg, m.Hello):
            return self._hello(peer, rid, msg)
        if isinstance(msg, m.CreateSegment):
            name = msg.segment.encode()
            return self._container(name).create_segment(peer, rid, name)
        if isinstance(msg, m.GetSegmentInfo):
            name = msg.segment.encode()
            return self._container(name).segment_info(rid, name)
        if isinstance(msg, m.SealSegment):
            name = msg.segment.encode()
            return self._container(name).seal_segment(peer, rid, name)
        if isinstance(msg, m.TruncateSegment):
            name = msg.segment.encode()
            return self._container(name).truncate_segment(peer, rid, name, msg.offset)
        if isinstance(msg, m.DeleteSegment):
            name = msg.segment.encode()
            return self._container(name).delete_segment(peer, rid, name)
        raise InvalidMessage(f"worker: unexpected message {type(msg).__name__}")

    def _hello(self, peer: bytes, rid: int, msg: m.Hello) -> list[Any]:
        try:
            reply = codec.hello_reply(
                msg,
                role="worker",
                server_id=str(self.config.worker_id),
                incarnation=self.incarnation,
            )
        except UnsupportedVersion:
            self.ignored_peers.add(peer)  # answered once with the supported range, then closed
            raise
        return codec.encode(reply, rid)

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        assert self.router is not None
        try:
            self.router.send_multipart([peer, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:  # peer gone (ROUTER_MANDATORY) or its queue full: it will retry
            self.dropped_sends += 1

    def _send_plans(self, plans: list[ReadPlan]) -> None:
        for plan in plans:
            if plan.views:
                self._send_views(plan)
            elif plan.lts is not None:
                assert self.storage is not None, "LTS data without an LTS store"
                self.storage.read(
                    plan.lts,
                    lambda data, exc, plan=plan: self._lts_reply(plan, data, exc),
                    frames=plan.zstd,
                )
            else:
                dlog = self.logs[container_for(plan.segment, self.config.container_count)]
                try:
                    payload = [dlog.read(p.ledger_id, p.position, p.length) for p in plan.pieces]
                except (Fenced, StorageError) as exc:  # a newer owner has the log; I/O error
                    self.fatal = exc
                    self._fail_stop()
                except StreamVaultError as exc:  # unreachable bookies: the reader may retry
                    self._send(plan.peer, codec.encode_exception(plan.request_id, exc))
                    continue
                reply = m.SegmentRead(
                    plan.offset, plan.segment_length, plan.end_of_segment, plan.segment, payload
                )
                self._send(plan.peer, codec.encode(reply, plan.request_id))

    def _send_views(self, plan: ReadPlan) -> None:
        """Cache bytes go out zero-copy; their blocks are lent until ZeroMQ is done."""
        assert self.router is not None and self.ring is not None
        reply = m.SegmentRead(
            plan.offset, plan.segment_length, plan.end_of_segment, plan.segment, plan.views
        )
        try:
            tracker = self.router.send_multipart(
                [plan.peer, *codec.encode(reply, plan.request_id)],
                zmq.NOBLOCK,
                copy=False,
                track=True,
            )
        except zmq.ZMQError:
            self.dropped_sends += 1
            return
        for block in plan.blocks:
            self.ring.lend(block, tracker)

    def _lts_reply(
        self, plan: ReadPlan, data: memoryview | StoredFrames | None, exc: BaseException | None
    ) -> None:
        if data is None:
            err = exc if isinstance(exc, StreamVaultError) else InternalError(repr(exc))
            self._send(plan.peer, codec.encode_exception(plan.request_id, err))
            return
        if isinstance(data, StoredFrames):
            assert self.storage is not None
            self.storage.counters["lts_zstd_reads"] += 1
            end = plan.sealed and plan.offset + data.raw_bytes >= plan.segment_length
            body = m.SegmentReadZstd(
                plan.offset,
                plan.segment_length,
                end,
                plan.segment,
                data.skip,
                data.raw_bytes,
                data.frames,
            )
            self._send(plan.peer, codec.encode(body, plan.request_id))
            return
        end = plan.sealed and plan.offset + len(data) >= plan.segment_length
        reply = m.SegmentRead(
            plan.offset, plan.segment_length, end, plan.segment, [data] if data else []
        )
        self._send(plan.peer, codec.encode(reply, plan.request_id))

    def _flush(self) -> None:
        for cid, container in self.containers.items():
            if not container.queue:
                continue
            dlog = self.logs[cid]
            while container.queue:
                built = container.build_frame(dlog.acquire_buffer)
                if built is None:
                    break
                buffer, payload_bytes, token = built
                dlog.submit(buffer, payload_bytes, (container, token))

    def _checkpoint_idle(self, now: float) -> None:
        """Roll the log of each idle container whose bytes are all in LTS over and queue a
        checkpoint into the new ledger, so the ledgers holding that data go (an idle
        container's open ledger would otherwise pin them: Container.idle_checkpoint_due)."""
        queued = False
        for cid, container in self.containers.items():
            dlog = self.logs[cid]
            if container.idle_checkpoint_due(now) and dlog.holds_records():
                dlog.roll_over()  # before the record is submitted: it starts the new ledger
                container.checkpoint_idle()
                queued = True
                log.info(
                    "worker=%d container=%d idle, all in LTS: checkpoint into a new ledger",
                    self.config.worker_id,
                    cid,
                )
        if queued:
            self._flush()
            self._replicate(())

    def _complete(self) -> None:
        completions = self.completions
        touched: set[int] = set()
        while completions:
            dlog, buffer, token, location = completions.popleft()
            if buffer is None:  # a log task finished: ledgers were deleted
                dlog.forget_ledgers(token[1])
                continue
            container, ops_token = token
            effects, plans = container.committed(
                ops_token,
                location.ledger_id,
                location.record_pos,
                buffer.payload,
                time.monotonic(),
                location.entry_id,
            )
            dlog.release(buffer)
            touched.add(container.container_id)
            for peer, frames in effects:
                self._send(peer, frames)
            if plans:
                self._send_plans(plans)
        for cid in touched:
            container = self.containers[cid]
            container.maybe_checkpoint()
            if container.truncate_before is not None:
                self.logs[cid].truncate_before(container.truncate_before)
                container.truncate_before = None

    def _fail_stop(self) -> None:
        log.critical(
            "worker=%d fail-stop after storage error: %r", self.config.worker_id, self.fatal
        )
        logging.shutdown()
        os._exit(EXIT_STORAGE_FAILURE)

    def _log(self, cid: int, store: LocalFileStore) -> LocalDurableLog | ReplicatedLog:
        cfg = self.config
        key = f"container-{cid:04d}"
        if isinstance(self.committer, Replicator):
            assert cfg.replication is not None
            dlog = ReplicatedLog(
                key=key,
                container_id=cid,
                store=store,
                replicator=self.committer,
                replication=cfg.replication,
                ctx=self.ctx,
                config=cfg.log,
                instance_round=self.instance_round,
            )
            self.mode = dlog.mode
            return dlog
        return LocalDurableLog(
            log_dir(cfg.data_dir, cid),
            key=key,
            store=store,
            committer=self.committer,
            mode=self.mode,
            config=cfg.log,
        )

    # --- controller ------------------------------------------------------------------------
    def status_info(self) -> dict[str, Any]:
        counters: dict[str, int] = collections.Counter()
        for container in self.containers.values():
            counters.update(container.counters)
        return {
            "durability_mode": self.mode,
            "epochs": {str(cid): dlog.epoch for cid, dlog in self.logs.items()},
            "failed_containers": {str(c): e.message for c, e in self.failed.items()},
            "dropped_sends": self.dropped_sends,
            **self.committer.counters,
            "latency_ms": summaries(self.committer.latency),
            "cache_pinned": round(self.ring.utilization, 4) if self.ring else None,
            "cache_misses": self.segment_cache.misses if self.segment_cache else 0,
            "credit": round(self._credit(), 3),
            **(self.storage.info() if self.storage else {}),
            **counters,
        }

    def _heartbeat(self) -> None:
        assert self._controller is not None
        self._controller.beat(
            m.Heartbeat(
                role="worker",
                id=str(self.config.worker_id),
                pid=os.getpid(),
                endpoint=self.endpoint,
                state=self.state,
                containers=list(self.config.containers),
                info=self.status_info(),
            )
        )

    # --- stop ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stopping = True
        self._populate_stop.set()
        self.waker.wake()

    def _shutdown(self) -> None:
        self.state = "stopping"
        deadline = time.monotonic() + 10
        while any(c.in_flight for c in self.containers.values()) and time.monotonic() < deadline:
            if self.fatal is not None:
                self._fail_stop()
            self.waker.drain()
            self._replicate(self._bookie_sockets())
            self._complete()
            time.sleep(0.005)
        self._complete()
        self.committer.stop()
        if self.storage is not None:
            self.storage.close()
        for dlog in self.logs.values():
            dlog.close()
        if self.router is not None:
            self.router.close(0)
        if self._controller is not None:
            self._controller.close()
        self.waker.close()
        self.ctx.term()
        log.info("worker=%d stopped", self.config.worker_id)


def run(config: WorkerConfig) -> int:
    """Entry point of the worker process."""
    # The loop thread shares the GIL with the committer and LTS threads; a short switch
    # interval bounds how long a ready loop waits for it (Python's default is 5 ms).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if config.cpu is not None:
        try:
            os.sched_setaffinity(0, {config.cpu})
        except OSError as exc:
            log.info("worker=%d not pinned to cpu=%d: %s", config.worker_id, config.cpu, exc)
    worker = Worker(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.request_stop())
    if config.standby:
        standby = StandbyConfig(config.worker_id, config.containers, config.controller)
        if not wait_for_takeover(worker.ctx, standby, lambda: worker.stopping):
            worker.committer.stop()
            worker.waker.close()
            worker.ctx.term()
            return 0
    worker.open()
    worker.serve_forever()
    return 0
