"""streamvault.client: the public API (DESIGN.md §10).

    with StreamManager("tcp://127.0.0.1:9090") as mgr:
        mgr.create_scope("s"); mgr.create_stream("s", "t", initial_segments=4)
        with mgr.create_writer("s", "t") as w:
            w.write_event(b"hello", routing_key="k")

Reading order: manager → writer (segment_writer, routing) → reader (reader_group_state,
synchronizer, reader_group) → controller_client, connection → protocol/.
The client imports nothing else from streamvault.
"""

from streamvault.client.manager import StreamManager
from streamvault.client.reader import EventRead, EventStreamReader
from streamvault.client.reader_group import ReaderGroup
from streamvault.client.writer import EventStreamWriter, WriterConfig

__all__ = [
    "EventRead",
    "EventStreamReader",
    "EventStreamWriter",
    "ReaderGroup",
    "StreamManager",
    "WriterConfig",
]
