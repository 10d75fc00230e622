"""Shared fixtures: a real standalone cluster per test module or test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import Standalone


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    cluster = Standalone(tmp_path / "data").start()
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture(scope="module")
def shared_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    cluster = Standalone(tmp_path_factory.mktemp("cluster") / "data").start()
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
def manager(shared_standalone: Standalone):
    from streamvault.client import StreamManager

    with StreamManager(shared_standalone.controller, timeout_s=30) as mgr:
        yield mgr
