"""A stateful model test: the container over the real durable log (files, committer thread)
against a plain model, through appends, commits, crashes (acks lost, torn tails), recovery
and client retries. After every step, what the container serves must be every acknowledged
event exactly once, per writer in order, and nothing nobody wrote (the machine:
tests/support/container_model.py)."""

from __future__ import annotations

from hypothesis import settings
from support.container_model import ContainerOverLog

ContainerOverLog.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None
)
TestContainerOverLog = ContainerOverLog.TestCase
