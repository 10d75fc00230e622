"""streamvault.client: the public API (DESIGN.md §10).

    with StreamManager("tcp://127.0.0.1:9090") as mgr:
        mgr.create_scope("s"); mgr.create_stream("s", "t", initial_segments=4)
        with mgr.create_writer("s", "t") as w:
            w.write_event(b"hello", routing_key="k")

Reading order: manager → writer (segment_writer, routing) → reader (reader_group_state,
synchronizer, reader_group) → controller_client, connection → protocol/.
The client imports nothing else from streamvault.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamvault.client.manager import StreamManager
    from streamvault.client.reader import EventRead, EventStreamReader
    from streamvault.client.reader_group import ReaderGroup
    from streamvault.client.writer import EventStreamWriter, WriterConfig

_HOMES = {
    "EventRead": "reader",
    "EventStreamReader": "reader",
    "EventStreamWriter": "writer",
    "ReaderGroup": "reader_group",
    "StreamManager": "manager",
    "WriterConfig": "writer",
}
"""Where each public name lives, imported on first use: every server process imports
`streamvault.client.protocol`, hence this package, and must not pay for the whole client
(numpy, the writer, the reader) at start."""

__all__ = [
    "EventRead",
    "EventStreamReader",
    "EventStreamWriter",
    "ReaderGroup",
    "StreamManager",
    "WriterConfig",
]
assert sorted(_HOMES) == __all__


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'streamvault.client' has no attribute {name!r}")
    value = getattr(import_module(f"streamvault.client.{home}"), name)
    globals()[name] = value
    return value
