"""Named crash points and fault points for fault tests (TESTING.md §3).

A test arms one point for every process it starts:

    STREAMVAULT_CRASH_POINT=<name>[:<marker file>]

The process that reaches the point SIGKILLs itself, as a power cut would stop it there. With
a marker file the point fires once across all processes and restarts (the first to get
there creates the marker). Unarmed, a point costs one string comparison. The environment is
read once, at import.

Fault points make an I/O call fail where no device can be made to (no device-mapper here):

    STREAMVAULT_FAULT_POINT=<name>[:<marker file>]

The process reaching the point gets the point's OSError instead of the call's result (once
across processes with a marker), exactly as if the kernel had returned it.

Stop points freeze the process at a crash point instead of killing it:

    STREAMVAULT_STOP_POINT=<name>[:<marker file>]

The process reaching the point SIGSTOPs itself (every thread stops there, as a hung or
paused machine would), so a test can fail its containers over and then SIGCONT it as a
zombie owner at a known step (TESTING.md row 13).
"""

from __future__ import annotations

import errno
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


_STOP, _, _STOP_MARKER = os.environ.get("STREAMVAULT_STOP_POINT", "").partition(":")

_FAULT, _, _FAULT_MARKER = os.environ.get("STREAMVAULT_FAULT_POINT", "").partition(":")

FAULT_POINTS = {"journal_fdatasync_eio": errno.EIO}


def _first(marker: str) -> bool:
    """True for the first process to get here (creates the marker); always without one."""
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def fault_point(name: str) -> None:
    """Raise the point's OSError if it is armed (once, with a marker)."""
    assert name in FAULT_POINTS, name
    if name == _FAULT and _first(_FAULT_MARKER):
        code = FAULT_POINTS[name]
        raise OSError(code, f"{os.strerror(code)} (fault point {name})")


def crash_point(name: str) -> None:
    """SIGKILL (crash point) or SIGSTOP (stop point) this process here if armed."""
    assert name in POINTS, name
    if name == _POINT and _first(_MARKER):
        os.kill(os.getpid(), signal.SIGKILL)
    if name == _STOP and _first(_STOP_MARKER):
        os.kill(os.getpid(), signal.SIGSTOP)
