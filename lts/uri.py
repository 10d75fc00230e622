"""Chunk-store URIs: one string in a config or on a command line names the LTS backend.

Accepted forms (anything else is `InvalidArgument`, before anything is opened):

- `file:DIR`, `file://DIR` with an absolute DIR (`file:///var/lib/sv/lts`), or a plain path
  (`/var/lib/sv/lts`, `./lts`) → `FileChunkStore(DIR)`. A plain path must not look like
  `scheme:...`; write `file:` before a path whose first component holds a colon.
- `s3://BUCKET[/PREFIX]` → `S3ChunkStore(BUCKET, prefix=PREFIX, endpoint_url=s3_endpoint)`;
  credentials and region come from boto3's usual sources unless the caller builds the
  store itself.

This module owns only the parsing; `S3ChunkStore` (and with it boto3) is imported only when
an `s3://` URI is opened.
"""

from __future__ import annotations

import re
from typing import Final

from streamvault.client.protocol.errors import InvalidArgument
from streamvault.lts.chunk_store import ChunkStore
from streamvault.lts.file_store import FileChunkStore

_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_FORMS: Final = "file:DIR, a plain path, or s3://BUCKET[/PREFIX]"


def open_chunk_store(spec: str, *, s3_endpoint: str | None = None) -> ChunkStore:
    """Open the chunk store `spec` names (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument(f"chunk store uri {spec!r}: empty; expected {_FORMS}", uri=spec)
    if spec.startswith("s3://"):
        return _open_s3(spec, s3_endpoint)
    if spec.startswith("file:"):
        return FileChunkStore(_file_path(spec))
    scheme = _SCHEME_RE.match(spec)
    if scheme is not None:
        raise InvalidArgument(
            f"chunk store uri {spec!r}: unknown scheme {scheme[0]!r}; expected {_FORMS}",
            uri=spec,
        )
    return FileChunkStore(spec)


def _file_path(spec: str) -> str:
    rest = spec[len("file:") :]
    if rest.startswith("//"):  # file://[localhost]/abs/path
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost") or not slash:
            raise InvalidArgument(
                f"chunk store uri {spec!r}: file URIs name a local absolute path "
                "(file:///path or file:path)",
                uri=spec,
            )
        rest = "/" + path
    if not rest:
        raise InvalidArgument(f"chunk store uri {spec!r}: no directory after 'file:'", uri=spec)
    return rest


def _open_s3(spec: str, s3_endpoint: str | None) -> ChunkStore:
    bucket, _, prefix = spec[len("s3://") :].partition("/")
    if not bucket or any(char in spec for char in "?#"):
        raise InvalidArgument(
            f"chunk store uri {spec!r}: expected s3://BUCKET[/PREFIX] (no query or fragment)",
            uri=spec,
        )
    from streamvault.lts.s3_store import S3ChunkStore  # boto3 only when S3 is used

    return S3ChunkStore(bucket, prefix=prefix, endpoint_url=s3_endpoint)
