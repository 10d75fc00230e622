"""Names and stable hashes shared by every component.

- Scope, stream and reader-group names: 1..NAME_CHARS_MAX of `[A-Za-z0-9_-]`; names that
  start with `_` are reserved for streamvault's internal streams.
- Segment id = (creation epoch << 32) | segment number; a segment's qualified name is
  `scope/stream/<segment id>`.
- Routing keys and segment names are hashed with BLAKE2b (stable across processes and
  versions, unlike Python's `hash()`): a routing key to a point in [0, 1), a segment name to
  its container.
"""

from __future__ import annotations

import hashlib
import re
from typing import NewType

from streamvault.client.protocol.errors import InvalidArgument
from streamvault.client.protocol.limits import NAME_CHARS_MAX, SEGMENT_NAME_BYTES_MAX

SegmentId = NewType("SegmentId", int)
ContainerId = NewType("ContainerId", int)

_NAME_RE = re.compile(r"[A-Za-z0-9_\-]+")
_HASH_SCALE = float(1 << 64)


def check_name(kind: str, name: object, *, internal_ok: bool = False) -> str:
    """Return `name` if it is a valid scope/stream/group name, else raise InvalidArgument."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > NAME_CHARS_MAX:
        raise InvalidArgument(
            f"{kind} name {name!r} must be 1..{NAME_CHARS_MAX} characters of [A-Za-z0-9_-]",
            field=kind,
        )
    if name.startswith("_") and not internal_ok:
        raise InvalidArgument(
            f"{kind} name {name!r}: names starting with '_' are reserved", field=kind
        )
    return name


def segment_id(*, epoch: int, number: int) -> SegmentId:
    assert 0 <= epoch < (1 << 31) and 0 <= number < (1 << 32)
    return SegmentId((epoch << 32) | number)


def segment_number(seg: int) -> int:
    return seg & 0xFFFFFFFF


def segment_epoch(seg: int) -> int:
    return seg >> 32


def segment_name(scope: str, stream: str, seg: int) -> str:
    return f"{scope}/{stream}/{seg}"


def parse_segment_name(name: str) -> tuple[str, str, int]:
    """Split `scope/stream/id`; raise InvalidArgument if malformed."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise InvalidArgument(f"segment name {name!r} is not scope/stream/<id>", field="segment")
    check_name("scope", parts[0], internal_ok=True)
    check_name("stream", parts[1], internal_ok=True)
    return parts[0], parts[1], int(parts[2])


def check_segment_name_bytes(name: bytes) -> bytes:
    if not 0 < len(name) <= SEGMENT_NAME_BYTES_MAX:
        raise InvalidArgument(
            f"segment name length {len(name)} not in 1..{SEGMENT_NAME_BYTES_MAX}", field="segment"
        )
    return name


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def container_for(name: str | bytes, container_count: int) -> ContainerId:
    """The container that owns a segment: a stable hash of its qualified name."""
    assert container_count > 0
    raw = name.encode() if isinstance(name, str) else name
    return ContainerId(_hash64(raw) % container_count)


def key_point(routing_key: str) -> float:
    """Map a routing key to [0, 1), stably."""
    return _hash64(routing_key.encode()) / _HASH_SCALE


def reader_group_stream(group: str) -> str:
    """The internal stream holding a reader group's state synchronizer segment."""
    return f"_RG{group}"
