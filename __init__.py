"""streamvault: durable storage for data streams.

The installed package maps the repository's top-level folders as subpackages
(`streamvault.client`, `.dataplane`, `.controlplane`, `.lts`, `.tools`). This root package
only carries the version and re-exports the client's public API (lazily, so that server
processes do not import the client).
"""

from typing import Any

__version__ = "0.1.0"
"""pyproject.toml's version (tests/test_packaging.py checks they agree). A constant, not
`importlib.metadata`, whose import cost every process ~60 ms at start."""

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
