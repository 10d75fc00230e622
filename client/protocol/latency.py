"""Latency windows: the durations of one stage of a process, as percentiles for status.

A process times a stage (a bookie's group-commit turn, its journal's `pwrite` and
`fdatasync`, a replicated entry's quorum round trip, a local log's commit cycle) with
`record(seconds)`: one store into a preallocated ring of the last `WINDOW_SAMPLES`
durations, no allocation, no lock. `summary()` gives, in milliseconds, the percentiles of
the samples in the ring and the count recorded since start; the process puts it in its
heartbeat's info, so `streamvault status --json` shows where the time goes (the disk, the
replicas, the CPU) without a profiler.

One thread at a time records into a window. `summary` may run on another thread: it
copies the ring first (a snapshot, possibly one sample behind).
"""

from __future__ import annotations

from array import array
from typing import Any

WINDOW_SAMPLES = 2048
"""Samples a window keeps: at a few hundred a second, the last several seconds."""


class LatencyWindow:
    """The last `samples` durations of one stage (module docstring)."""

    __slots__ = ("_values", "_count")

    def __init__(self, samples: int = WINDOW_SAMPLES) -> None:
        if samples <= 0:
            raise ValueError(f"LatencyWindow: samples={samples} must be > 0")
        self._values = array("d", bytes(8 * samples))
        self._count = 0

    def record(self, seconds: float) -> None:
        values = self._values
        values[self._count % len(values)] = seconds
        self._count += 1

    def summary(self) -> dict[str, Any]:
        """{"count", "p50", "p95", "p99", "max"}: milliseconds over the samples kept (the
        percentiles by nearest rank); only "count" while nothing was recorded."""
        count = self._count
        kept = sorted(self._values[: min(count, len(self._values))])
        if not kept:
            return {"count": count}
        last = len(kept) - 1

        def at(share: float) -> float:
            return round(kept[min(last, int(share * len(kept)))] * 1e3, 3)

        return {
            "count": count,
            "p50": at(0.50),
            "p95": at(0.95),
            "p99": at(0.99),
            "max": round(kept[last] * 1e3, 3),
        }


def summaries(windows: dict[str, LatencyWindow]) -> dict[str, dict[str, Any]]:
    """`summary()` of each named window (for a status info's "latency_ms")."""
    return {name: window.summary() for name, window in windows.items()}
