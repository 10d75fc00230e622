"""Named crash points for fault tests (TESTING.md §3).

A test arms one point for every process it starts:

    STREAMVAULT_CRASH_POINT=<name>[:<marker file>]

The process that reaches the point SIGKILLs itself, as a power cut would stop it there. With
a marker file the point fires once across all processes and restarts (the first to get
there creates the marker). Unarmed, a point costs one string comparison. The environment is
read once, at import.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("STREAMVAULT_CRASH_POINT", "")
_POINT, _, _MARKER = _SPEC.partition(":")

POINTS = (
    "before_write",
    "after_write_before_sync",
    "after_sync_before_ack",
    "rollover_after_create",
    "truncate_after_meta",
    "after_chunk_put_before_meta",
    "before_chunk_meta",
    "journal_before_write",
    "journal_after_write_before_sync",
    "journal_after_sync",
)


def crash_point(name: str) -> None:
    assert name in POINTS, name
    if name != _POINT:
        return
    if _MARKER:
        try:
            os.close(os.open(_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
