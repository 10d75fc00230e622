"""Byte sizes as options take them: `64M`, `1G`, `4096` (K/M/G/T are powers of 1024).

Apart from the cache (its home before) so that the CLI, which every process starts from,
parses sizes without importing numpy.
"""

from __future__ import annotations

from streamvault.client.protocol.errors import InvalidArgument

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`64M`, `1G`, `4096` → bytes; InvalidArgument otherwise."""
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = raw[-1:] if raw[-1:] in SIZE_SUFFIXES and raw[-1:] else ""
    number = raw[: len(raw) - len(suffix)]
    try:
        value = int(float(number) * SIZE_SUFFIXES[suffix])
    except ValueError:
        raise InvalidArgument(
            f"size {text!r}: expected bytes with an optional K/M/G suffix", field="size"
        ) from None
    if value <= 0:
        raise InvalidArgument(f"size {text!r} must be > 0", field="size")
    return value
