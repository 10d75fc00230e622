"""What every streamvault process does first: its title, logging, and dying with its parent."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_title(role: str, ident: str) -> None:
    """`ps` shows `streamvault <role> <id>`."""
    from setproctitle import setproctitle

    setproctitle(f"streamvault {role} {ident}")


def configure_logging(level: str, role: str, ident: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {role}={ident} pid=%(process)d %(name)s: %(message)s",
        stream=sys.stderr,
    )


def die_with_parent(parent_pid: int | None) -> None:
    """Get SIGTERM when the parent process dies (Linux); exit now if it already has."""
    if parent_pid is None:
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        sys.exit(f"parent process {parent_pid} is gone")
