"""The stateful model test of test_container_model.py, over the replicated log on three real
bookie processes (E = Qw = 3, Qa = 2): appends, commits, retries, crashes whose in-flight
entries were acknowledged by the bookies but not applied, and crashes whose in-flight entries
reached only one bookie (two were stopped). After every step the container serves every
acknowledged event exactly once, per writer in order, and nothing nobody wrote.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading

import pytest
import zmq
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from support.bookies import BookieProcess, running_bookies
from support.container_model import CONFIG, WRITERS, ContainerOverLog
from support.replicated import replication

from streamvault.dataplane.log import LocalFileStore
from streamvault.dataplane.log.replicated_log import ReplicatedLog
from streamvault.dataplane.log.replicator import Replicator

BOOKIES: list[BookieProcess] = []
CONTAINER_IDS = itertools.count(1)
"""Each example gets its own container id, hence its own ledger ids on the shared bookies."""


@pytest.fixture(scope="module", autouse=True)
def bookies(tmp_path_factory: pytest.TempPathFactory):
    with running_bookies(tmp_path_factory.mktemp("bookies")) as procs:
        BOOKIES[:] = procs
        yield procs


class ContainerOverReplicatedLog(ContainerOverLog):
    def _new_log(self) -> ReplicatedLog:
        if not hasattr(self, "container_id"):
            self.container_id = next(CONTAINER_IDS)
        self.ctx = zmq.Context()
        rep = replication([b.endpoint for b in BOOKIES])
        self.committer = Replicator(self.ctx, rep, self._deliver, lambda exc: None)
        return ReplicatedLog(
            key=f"container-{self.container_id}",
            container_id=self.container_id,
            store=LocalFileStore(str(self.root / "coord")),
            replicator=self.committer,
            replication=rep,
            ctx=self.ctx,
            config=CONFIG,
        )

    def _close(self) -> None:
        self.committer.stop()
        self.log.close()
        self.ctx.term()

    @rule(durable=st.booleans(), torn=st.booleans())
    def crash(self, durable: bool, torn: bool) -> None:
        """Kill the owner: queued operations vanish. `durable`: the in-flight entries reached
        an ack quorum but the acks were lost. `torn`: two bookies were stopped, so the
        in-flight entries reached one bookie only (ambiguous: recovery may keep them)."""
        if torn:
            for bookie in BOOKIES[:2]:
                os.killpg(bookie.proc.pid, signal.SIGSTOP)
            try:
                self._submit_all()
                threading.Event().wait(0.1)  # the adds reach the one running bookie
                self._close()
            finally:
                for bookie in BOOKIES[:2]:
                    os.killpg(bookie.proc.pid, signal.SIGCONT)
        else:
            if durable:
                self._submit_all()
                while self.log.in_flight:
                    self._complete(wait_for=1, apply=False)
            self._close()
        self._open()
        self.must_resend = set(WRITERS)

    def _submit_all(self) -> int:
        submitted = 0
        while self.container.queue:
            built = self.container.build_frame(self.log.acquire_buffer)
            if built is None:
                return submitted  # all buffers in flight (e.g. bookies stopped)
            buffer, size, token = built
            self.log.submit(buffer, size, token)
            submitted += 1
        return submitted

    def _commit(self) -> None:
        while self.container.queue or self.log.in_flight:
            self._submit_all()
            for frames in self._complete(wait_for=1):
                self._on_reply(frames)

    def teardown(self) -> None:
        self._close()
        shutil.rmtree(self.root, ignore_errors=True)


ContainerOverReplicatedLog.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None
)
TestContainerOverReplicatedLog = ContainerOverReplicatedLog.TestCase
