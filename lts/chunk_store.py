"""The chunk-store interface: what every long-term-storage backend provides.

A chunk is an immutable object holding a contiguous byte range of one segment (DESIGN.md
§7). This module owns the contract the backends (`file_store`, `s3_store`) implement and
the one conformance suite (`tests/lts/test_chunk_store.py`) checks:

- `create(name, data)` is create-with-content and atomic: a reader sees the chunk absent or
  whole, never partial. A name that exists is never overwritten: `ChunkExists`. Callers
  make names unique by embedding the writer's container epoch and start offset, so a stale
  owner can never collide with what a new owner relies on.
- `read(name, offset, length)` returns `min(length, size - offset)` bytes (empty at or past
  the end): short only at the end of the chunk.
- Absent chunks: `read`/`size` raise `ChunkNotFound`, `exists` answers False, `delete`
  answers False.
- `list(prefix)` answers the chunks whose names start with `prefix`, sorted by name; it
  never shows a partial chunk or a backend's temporary object.
- Chunk names are `/`-separated relative paths of `[A-Za-z0-9._=-]` components (no empty,
  `.` or `..` component), at most `CHUNK_NAME_BYTES_MAX` bytes and each component at most
  `CHUNK_NAME_COMPONENT_BYTES_MAX` (the file name limit of common file systems, so a name
  that works on one backend works on all). Anything else is `InvalidArgument`, checked
  before any I/O. Characters outside that alphabet (such as `~`) are therefore free for a
  backend's temporary and probe objects.
- A name must not also be a path prefix of another chunk's name (chunk `a` and chunk
  `a/b`): object stores allow it, directories cannot; the file backend refuses it with
  `InvalidArgument`. Chunk names of one segment have a fixed depth, so this never arises.
- Errors: `InvalidArgument` (bad name or range), `ChunkNotFound`, `ChunkExists`, and
  `StorageError` for everything the backend could not do (naming the operation, the object
  and the cause). A `ChunkExists` from a create that was retried after an ambiguous failure
  may be the caller's own earlier attempt; backends resolve that case where they can.
- Backends are safe to call from several threads at once. Optional capabilities
  (`supports_append`, `supports_concat`) are False for every backend so far.

This module never does I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from streamvault.client.protocol.errors import InvalidArgument

CHUNK_NAME_BYTES_MAX: Final = 512
"""Longest chunk name, in UTF-8 bytes (names are ASCII, so also in characters)."""
CHUNK_NAME_COMPONENT_BYTES_MAX: Final = 255
"""Longest `/`-separated component of a chunk name (NAME_MAX of ext4, xfs, NFS)."""

_COMPONENT_RE: Final = re.compile(r"[A-Za-z0-9._=\-]+")
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9._=/\-]*")


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """One chunk as `list` reports it."""

    name: str
    size: int


@runtime_checkable
class ChunkStore(Protocol):
    """A long-term-storage backend holding immutable chunks (see the module docstring)."""

    supports_append: bool
    """True if the backend can append to an existing chunk (none can yet)."""
    supports_concat: bool
    """True if the backend can concatenate chunks server-side (none can yet)."""

    def create(self, name: str, data: bytes | memoryview) -> None:
        """Store `data` as chunk `name`, atomically; `ChunkExists` if the name is taken."""
        ...

    def read(self, name: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`; short only at the end; `ChunkNotFound`."""
        ...

    def size(self, name: str) -> int:
        """The chunk's length in bytes; `ChunkNotFound` if absent."""
        ...

    def exists(self, name: str) -> bool:
        """Whether chunk `name` exists."""
        ...

    def delete(self, name: str) -> bool:
        """Remove chunk `name`; True if it existed, False if it was already absent."""
        ...

    def close(self) -> None:
        """Release connections and handles; later calls raise `InvalidArgument`."""
        ...

    # Last, so that the method name does not shadow the builtin in the annotations above.
    def list(self, prefix: str = "") -> list[ChunkInfo]:
        """Every chunk whose name starts with `prefix`, sorted by name."""
        ...


def validate_chunk_name(name: str) -> None:
    """Raise `InvalidArgument` unless `name` is a valid chunk name (module docstring)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"chunk name {name!r}: must be a non-empty string", name=name)
    if len(name.encode("utf-8", "surrogatepass")) > CHUNK_NAME_BYTES_MAX:
        raise InvalidArgument(
            f"chunk name {name[:64]!r}...: {len(name)} bytes > "
            f"chunk_name_bytes_max={CHUNK_NAME_BYTES_MAX}",
            name=name,
        )
    for component in name.split("/"):
        if component in ("", ".", "..") or not _COMPONENT_RE.fullmatch(component):
            raise InvalidArgument(
                f"chunk name {name!r}: component {component!r} must be [A-Za-z0-9._=-]+ "
                "and not '.' or '..' (names are relative '/'-separated paths)",
                name=name,
            )
        if len(component) > CHUNK_NAME_COMPONENT_BYTES_MAX:
            raise InvalidArgument(
                f"chunk name {name[:64]!r}...: component of {len(component)} bytes > "
                f"chunk_name_component_bytes_max={CHUNK_NAME_COMPONENT_BYTES_MAX}",
                name=name,
            )


def is_chunk_name(name: str) -> bool:
    """Whether `name` is a valid chunk name (backends use it to skip foreign objects)."""
    try:
        validate_chunk_name(name)
    except InvalidArgument:
        return False
    return True


def validate_chunk_prefix(prefix: str) -> None:
    """Raise `InvalidArgument` unless `prefix` can start a chunk name (`list`'s argument)."""
    if (
        not isinstance(prefix, str)
        or len(prefix) > CHUNK_NAME_BYTES_MAX
        or not _PREFIX_RE.fullmatch(prefix)
    ):
        raise InvalidArgument(
            f"chunk list: prefix {prefix!r} must be at most {CHUNK_NAME_BYTES_MAX} "
            "characters of [A-Za-z0-9._=/-]",
            prefix=prefix,
        )


def validate_read(name: str, offset: int, length: int) -> None:
    """Raise `InvalidArgument` unless `read(name, offset, length)` is well formed."""
    validate_chunk_name(name)
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        raise InvalidArgument(
            f"chunk read {name}: offset={offset!r} and length={length!r} must be integers >= 0",
            name=name,
            offset=offset,
            length=length,
        )
