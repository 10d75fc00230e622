"""streamvault: durable storage for data streams.

The installed package maps the repository's top-level folders as subpackages
(`streamvault.client`, `.dataplane`, `.controlplane`, `.lts`, `.tools`). This root package
only carries the version and re-exports the client's public API (lazily, so that server
processes do not import the client).
"""

from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("streamvault")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = [
    "EventRead",
    "EventStreamReader",
    "EventStreamWriter",
    "ReaderGroup",
    "StreamManager",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from streamvault import client

        return getattr(client, name)
    raise AttributeError(f"module 'streamvault' has no attribute {name!r}")
