"""Long-term storage (LTS): the chunk-store interface and its backends (DESIGN.md §7).

Sealed ranges of segments leave the durable log as immutable *chunks* in a local/NFS
directory or an S3 bucket. This package owns the narrow interface every backend provides
(create-with-content, range read, size, exists, list, delete) and the backends themselves;
one conformance suite (`tests/lts/test_chunk_store.py`) runs against each of them.

Reading order: `chunk_store` (the contract and chunk names) → `file_store` (temp, fsync,
link, fsync dir) → `s3_store` (conditional puts, multipart, bounded retries) → `uri`
(`file:DIR` / `s3://BUCKET/PREFIX` → a store) → `chunk_format` (what a chunk holds:
independently decodable zstd frames, an index and a footer).

`S3ChunkStore` is loaded on first use, so processes that never touch S3 do not import
boto3. This package may import only `streamvault.client.protocol`.
"""

from typing import Any

from streamvault.lts.chunk_store import (
    CHUNK_NAME_BYTES_MAX,
    ChunkInfo,
    ChunkStore,
    validate_chunk_name,
)
from streamvault.lts.file_store import FileChunkStore
from streamvault.lts.uri import open_chunk_store

__all__ = [
    "CHUNK_NAME_BYTES_MAX",
    "ChunkInfo",
    "ChunkStore",
    "FileChunkStore",
    "S3ChunkStore",
    "open_chunk_store",
    "validate_chunk_name",
]


def __getattr__(name: str) -> Any:
    if name == "S3ChunkStore":
        from streamvault.lts.s3_store import S3ChunkStore

        return S3ChunkStore
    raise AttributeError(f"module 'streamvault.lts' has no attribute {name!r}")
