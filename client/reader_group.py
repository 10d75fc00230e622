"""A reader group handle: who is reading, and taking a dead reader offline.

The group's state lives in its state-synchronizer segment (see reader_group_state.py);
this handle reads and updates it like any reader does.
"""

from __future__ import annotations

import zmq

from streamvault.client import reader_group_state as rgs
from streamvault.client.connection import SegmentClient
from streamvault.client.controller_client import ControllerClient
from streamvault.client.protocol import messages as m
from streamvault.client.synchronizer import StateSynchronizer


class ReaderGroup:
    def __init__(
        self, controller: ControllerClient, info: m.ReaderGroupInfo, ctx: zmq.Context
    ) -> None:
        self.scope, self.group, self.streams = info.scope, info.group, list(info.streams)
        self._client = SegmentClient(ctx, controller.endpoint_for)
        self._sync: StateSynchronizer[rgs.GroupState] = StateSynchronizer(
            self._client, info.state_segment, encode=rgs.encode_state, decode=rgs.decode_state
        )

    def state(self) -> rgs.GroupState:
        state = self._sync.fetch_updates()
        assert state is not None
        return state

    def online_readers(self) -> list[str]:
        return list(self.state().readers)

    def unread_segments(self) -> list[str]:
        return [s.segment for s in self.state().segments if not s.completed]

    def reader_offline(self, reader_id: str) -> None:
        """Return a dead reader's segments to the group at their last recorded positions."""
        self._sync.update(lambda s: rgs.remove_reader(s, reader_id, {}))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ReaderGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
