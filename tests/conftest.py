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


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("journal simulation (tests/dataplane/log/test_journal_sim.py)")
    group.addoption(
        "--sim-seeds", type=int, default=500, help="how many seeds the journal simulation runs"
    )
    group.addoption(
        "--sim-seed", type=int, default=None, help="replay this one journal simulation seed"
    )


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The seeds the deterministic simulation runs: `--sim-seed S` alone, else 0..N-1."""
    seed = request.config.getoption("--sim-seed")
    if seed is not None:
        return [seed]
    return list(range(request.config.getoption("--sim-seeds")))
