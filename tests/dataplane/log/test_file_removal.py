"""Removing large files in steps (file_removal.py): shrunk a step at a time then unlinked,
on the remover's thread; an I/O error kept and raised by `check`; close finishes the queue."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from streamvault.dataplane.log import file_removal
from streamvault.dataplane.log.file_removal import FileRemover, remove_in_steps

DEADLINE_S = 20.0
STEP = 64 * 1024


def _file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(b"\x01" * size)
        f.flush()
        os.fsync(f.fileno())
    return path


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_file_is_shrunk_a_step_at_a_time_then_unlinked(tmp_path: Path, monkeypatch):
    path = _file(tmp_path / "big", 5 * STEP + 100)
    sizes: list[int] = []
    real = os.ftruncate
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (sizes.append(size), real(fd, size)))
    remove_in_steps(str(path), step_bytes=STEP, pause_s=0.0)
    assert sizes == [4 * STEP + 100, 3 * STEP + 100, 2 * STEP + 100, STEP + 100, 100]
    assert not path.exists()
    remove_in_steps(str(path), step_bytes=STEP, pause_s=0.0)  # already gone: no error


def test_the_remover_removes_in_the_background_and_close_ends_the_pauses(tmp_path: Path):
    remover = FileRemover("test-remover")
    remover.start()
    try:
        paths = [_file(tmp_path / f"f{i}", 4 * STEP) for i in range(3)]
        for path in paths:
            remover.submit(
                lambda p=path: remove_in_steps(
                    str(p), step_bytes=STEP, pause_s=0.001, stopping=remover.stopping
                )
            )
        remover.remove(str(_file(tmp_path / "default", 4 * STEP)))  # one 4 MiB step: no pause
        _wait_for(remover.idle, "the removals")
        assert not any(p.exists() for p in paths) and not (tmp_path / "default").exists()
        remover.check()
    finally:
        remover.close()
    slow = FileRemover("test-remover")
    slow.start()
    path = _file(tmp_path / "slow", 4 * STEP)
    slow.submit(
        lambda: remove_in_steps(str(path), step_bytes=STEP, pause_s=3600.0, stopping=slow.stopping)
    )  # an hour per step
    started = time.monotonic()
    slow.close()  # the rest goes at once
    assert not path.exists() and time.monotonic() - started < DEADLINE_S


def test_an_io_error_of_the_remover_is_raised_by_check_and_reported(tmp_path: Path, monkeypatch):
    def failing(fd, size):
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(file_removal.os, "ftruncate", failing)
    reported: list[BaseException] = []
    remover = FileRemover("test-remover", fatal=reported.append)
    remover.start()
    try:
        remover.remove(str(_file(tmp_path / "f", 2 * file_removal.STEP_BYTES)))
        _wait_for(lambda: reported, "the failure")
        with pytest.raises(OSError, match="injected"):
            remover.check()
        assert isinstance(reported[0], OSError)
    finally:
        remover.close()
