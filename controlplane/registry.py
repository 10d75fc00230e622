"""Live processes of the cluster, from their heartbeats: the source of `status` and of the
container → worker endpoint map.

In-memory only: after a controller restart every process re-registers with its next
heartbeat (HEARTBEAT_INTERVAL_S). A process not heard from for `stale_after_s` is reported
as `unresponsive` and its containers are not routed to.

Two live workers may claim one container after a failover: the new owner (a standby that
took it over) and the old one, paused and resumed (a zombie, which stops at its first write
since the new owner's recovery fenced it). A container is routed to the claimant that
reports the highest log epoch for it (heartbeat `info["epochs"]`), the one that recovered
last; fencing, not this map, is what keeps a single writer.
"""

from __future__ import annotations

import threading
import time

from streamvault.client.protocol import messages as m

STALE_AFTER_S = 3.0
PROCESSES_MAX = 10_000


class Registry:
    def __init__(self, *, stale_after_s: float = STALE_AFTER_S) -> None:
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[m.Heartbeat, float]] = {}

    def beat(self, beat: m.Heartbeat) -> None:
        key = (beat.role, beat.id)
        with self._lock:
            if key not in self._entries and len(self._entries) >= PROCESSES_MAX:
                self._evict_stale()
            self._entries[key] = (beat, time.monotonic())

    def _evict_stale(self) -> None:
        now = time.monotonic()
        for key, (_, seen) in list(self._entries.items()):
            if now - seen > 10 * self.stale_after_s:
                del self._entries[key]

    def container_endpoints(self) -> dict[int, str]:
        now = time.monotonic()
        best: dict[int, tuple[int, str]] = {}
        with self._lock:
            for beat, seen in self._entries.values():
                if beat.role != "worker" or beat.state != "up" or now - seen > self.stale_after_s:
                    continue
                for container in beat.containers:
                    epoch = _epoch(beat, container)
                    if container not in best or epoch > best[container][0]:
                        best[container] = (epoch, beat.endpoint)
        return {container: endpoint for container, (_, endpoint) in best.items()}

    def processes(self) -> list[m.ProcessInfo]:
        now = time.monotonic()
        with self._lock:
            entries = list(self._entries.values())
        out = []
        for beat, seen in entries:
            age = now - seen
            state = beat.state if age <= self.stale_after_s else "unresponsive"
            out.append(
                m.ProcessInfo(
                    role=beat.role,
                    id=beat.id,
                    pid=beat.pid,
                    endpoint=beat.endpoint,
                    state=state,
                    containers=beat.containers,
                    info=beat.info,
                    age_s=round(age, 3),
                )
            )
        order = {"standalone": 0, "controller": 1, "host": 2, "uploader": 3, "worker": 4}
        out.sort(key=lambda p: (order.get(p.role, 9), p.id.zfill(8)))
        return out


def _epoch(beat: m.Heartbeat, container: int) -> int:
    """The log epoch `beat` reports for `container` (0 if it reports none)."""
    epochs = beat.info.get("epochs")
    epoch = epochs.get(str(container), 0) if isinstance(epochs, dict) else 0
    return epoch if isinstance(epoch, int) else 0
