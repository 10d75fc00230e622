"""Probe whether a directory's file system accepts O_DIRECT writes.

The answer decides the durability mode a log runs in: `o_direct+fdatasync` (writes bypass
the page cache; `fdatasync` makes them durable) or `buffered+fdatasync` (the fallback on
file systems such as tmpfs that refuse O_DIRECT). Durability never comes from O_DIRECT
alone.
"""

from __future__ import annotations

import logging
import mmap
import os

log = logging.getLogger(__name__)

MODE_DIRECT = "o_direct+fdatasync"
MODE_BUFFERED = "buffered+fdatasync"
_PROBE_BYTES = 4096


def probe_direct_io(directory: str) -> bool:
    """True if an aligned O_DIRECT write succeeds in `directory`."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    path = os.path.join(directory, f".odirect-probe-{os.getpid()}")
    buf = mmap.mmap(-1, _PROBE_BYTES)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | flag, 0o600)
    except OSError:
        return False
    try:
        os.pwrite(fd, buf, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        buf.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def durability_mode(directory: str, *, allow_direct: bool = True) -> str:
    mode = MODE_DIRECT if allow_direct and probe_direct_io(directory) else MODE_BUFFERED
    if mode == MODE_BUFFERED:
        log.warning("durability_mode=%s dir=%s (O_DIRECT unavailable or disabled)", mode, directory)
    return mode
