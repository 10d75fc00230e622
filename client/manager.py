"""StreamManager: the client's entry point (DESIGN.md §10).

Administration goes to the controller; writers and readers are created here and talk to
the workers directly.
"""

from __future__ import annotations

import zmq

from streamvault.client.controller_client import ControllerClient
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import InvalidArgument
from streamvault.client.protocol.limits import SEGMENTS_PER_STREAM_MAX
from streamvault.client.protocol.naming import check_name
from streamvault.client.reader import EventStreamReader
from streamvault.client.reader_group import ReaderGroup
from streamvault.client.writer import EventStreamWriter, WriterConfig

DEFAULT_CONTROLLER = "tcp://127.0.0.1:9090"


class StreamManager:
    def __init__(
        self, controller_uri: str = DEFAULT_CONTROLLER, *, timeout_s: float = 60.0
    ) -> None:
        self.controller_uri = controller_uri
        self.ctx = zmq.Context()
        self._controller = ControllerClient(controller_uri, ctx=self.ctx, timeout_s=timeout_s)
        self._owned: list = []

    # scopes --------------------------------------------------------------------------
    def create_scope(self, scope: str) -> bool:
        check_name("scope", scope)
        return self._controller.call(m.CreateScope(scope=scope)).changed

    def delete_scope(self, scope: str) -> bool:
        check_name("scope", scope)
        return self._controller.call(m.DeleteScope(scope=scope)).changed

    def list_scopes(self) -> list[str]:
        return self._controller.call(m.ListScopes()).names

    # streams -------------------------------------------------------------------------
    def create_stream(
        self, scope: str, stream: str, config: object = None, *, initial_segments: int | None = None
    ) -> bool:
        check_name("scope", scope)
        check_name("stream", stream)
        count = (
            initial_segments
            if initial_segments is not None
            else getattr(config, "initial_segments", 1)
        )
        if not isinstance(count, int) or not 1 <= count <= SEGMENTS_PER_STREAM_MAX:
            raise InvalidArgument(
                f"initial_segments={count!r} not in 1..{SEGMENTS_PER_STREAM_MAX}",
                field="initial_segments",
            )
        body = m.CreateStream(scope=scope, stream=stream, initial_segments=count)
        return self._controller.call(body).changed

    def list_streams(self, scope: str) -> list[str]:
        return self._controller.call(m.ListStreams(scope=scope)).names

    def get_stream_info(self, scope: str, stream: str) -> m.StreamInfo:
        return self._controller.call(m.GetStream(scope=scope, stream=stream))

    def seal_stream(self, scope: str, stream: str) -> bool:
        return self._controller.call(m.SealStream(scope=scope, stream=stream)).changed

    def truncate_stream(self, scope: str, stream: str, stream_cut: dict[str, int]) -> bool:
        """Drop each segment's bytes below its offset in `stream_cut` ({segment: offset},
        e.g. built from `EventRead.position`s); readers then start at the cut."""
        body = m.TruncateStream(scope=scope, stream=stream, cut=dict(stream_cut))
        return self._controller.call(body).changed

    def delete_stream(self, scope: str, stream: str) -> bool:
        return self._controller.call(m.DeleteStream(scope=scope, stream=stream)).changed

    # writers and readers ---------------------------------------------------------------
    def create_writer(
        self,
        scope: str,
        stream: str,
        *,
        writer_id: str | None = None,
        config: WriterConfig | None = None,
    ) -> EventStreamWriter:
        return EventStreamWriter(
            self.controller_uri, scope, stream, writer_id=writer_id, config=config, ctx=self.ctx
        )

    def create_reader_group(
        self, scope: str, group: str, streams: list[str], *, from_tail: bool = False
    ) -> ReaderGroup:
        check_name("reader group", group)
        if isinstance(streams, str) or not streams:
            raise InvalidArgument(
                "streams must be a non-empty list of stream names", field="streams"
            )
        for stream in streams:
            check_name("stream", stream)
        self._controller.call(
            m.CreateReaderGroup(
                scope=scope, group=group, streams=list(streams), from_tail=from_tail
            )
        )
        return self.get_reader_group(scope, group)

    def get_reader_group(self, scope: str, group: str) -> ReaderGroup:
        info = self._controller.call(m.GetReaderGroup(scope=scope, group=group))
        return ReaderGroup(self._controller, info, self.ctx)

    def delete_reader_group(self, scope: str, group: str) -> bool:
        return self._controller.call(m.DeleteReaderGroup(scope=scope, group=group)).changed

    def create_reader(self, scope: str, group: str, reader_id: str) -> EventStreamReader:
        check_name("reader", reader_id)
        return EventStreamReader(self.controller_uri, scope, group, reader_id, ctx=self.ctx)

    def status(self) -> m.Status:
        return self._controller.call(m.GetStatus())

    def close(self) -> None:
        self._controller.close()
        self.ctx.term()

    def __enter__(self) -> StreamManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
