"""Running a deterministic simulation over many seeds: the first failing seed fails the test
with its replay command, its step log and the exception; the totals of every run's stats
are returned (and printed) for the caller's checks that the faults actually happened."""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import pytest

from support.faulty_disk import SimulatedCrash


class Simulation(Protocol):
    stats: Counter[str]

    def run(self) -> None: ...

    def steps(self) -> list[str]: ...


def run_seeds(name: str, path: str, seeds: Iterable[int], make: Callable[[int], Simulation]):
    totals: Counter[str] = Counter()
    started = time.perf_counter()
    count = 0
    for seed in seeds:
        sim = make(seed)
        details = ""
        try:
            sim.run()
        except (Exception, SimulatedCrash) as exc:  # reported with the seed
            details = "".join(traceback.format_exception(exc))
        if details:  # outside the except block: the report shows no chained exception
            pytest.fail(
                f"{name} failed: seed={seed} (replay: pytest {path} --sim-seed {seed})\n"
                + "\n".join(sim.steps())
                + f"\n{details}",
                pytrace=False,
            )
        totals.update(sim.stats)
        count += 1
    elapsed = time.perf_counter() - started
    print(f"\n{name}: {count} seeds in {elapsed:.1f}s: {dict(sorted(totals.items()))}")
    return totals


@contextmanager
def quiet(logger_name: str) -> Iterator[None]:
    """Silence a logger of the code under test for a simulation: it logs every torn tail,
    recovery and refusal, and thousands of those only cost time here."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
