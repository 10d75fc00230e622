"""`S3ChunkStore`: chunks as objects in an S3 (or S3-compatible) bucket.

Chunk `a/b` is the object `<prefix>/a/b`. This module owns how the chunk-store contract
(`chunk_store`) maps onto S3 calls, and the retry policy for them:

- **create** is one `PutObject`, or a multipart upload above `multipart_bytes` (parts of
  `part_bytes`; the upload is aborted on failure, so no partial object ever appears). S3
  makes an object visible only when the put or the multipart completion succeeds, so a
  chunk is absent or whole.
  *Never overwrite*: where the endpoint honours `If-None-Match: *` (AWS since 2024, recent
  MinIO, moto), the put/completion is conditional and a taken name fails atomically (412 →
  `ChunkExists`). Whether it does is probed once, on the first create, with a throwaway
  `~probe-*` object (or fixed by `conditional_create=`). Otherwise create is HEAD-then-PUT:
  two creators of one name racing between the HEAD and the PUT could both succeed and the
  later one win. That race is harmless by construction: chunk names embed the writer's
  container epoch and start offset (DESIGN.md §7), so two writers never create the same
  name, and a stale owner (older epoch) never writes a name a new owner relies on.
  *Ambiguous retries*: if an attempt of the final put failed in a way that may have been
  applied (connection lost after sending, 500/502/504; not throttling) and the call then
  fails (a retry finds the name taken, or attempts run out), one HEAD compares the object's
  size and ETag (the MD5 S3 computes for unencrypted objects) with ours; equal means our own
  attempt landed and create succeeds. Where ETags are not MD5s (SSE-KMS), the answer stays
  the error.
- **read** is a ranged `GetObject` (`Range: bytes=a-b`); 416 means at or past the end.
- **list** walks `ListObjectsV2` pages, skipping keys that are not chunk names (probes,
  foreign objects). **delete** is HEAD (to answer whether it existed) then `DeleteObject`.

Retries: botocore's own retries are off (`total_max_attempts=1`) so that *this* loop is
the only one and `attempts_max` is the real bound. Throttling, 5xx and connection errors
are retried with capped exponential backoff and jitter; 404 becomes `ChunkNotFound`; any
other failure, or running out of attempts, is a `StorageError` naming the operation,
bucket, key, the S3 code and an operator hint. Safe for concurrent callers: boto3 clients
are thread-safe, and the only mutable state (the probe's answer) is behind a lock.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from typing import Any, Final, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config

from streamvault.client.protocol.errors import (
    ChunkExists,
    ChunkNotFound,
    InvalidArgument,
    StorageError,
    StreamVaultError,
)
from streamvault.client.protocol.limits import MIB
from streamvault.lts.chunk_store import (
    CHUNK_NAME_BYTES_MAX,
    ChunkInfo,
    is_chunk_name,
    validate_chunk_name,
    validate_chunk_prefix,
    validate_read,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

S3_KEY_BYTES_MAX: Final = 1024
"""Longest S3 object key; `prefix` + a chunk name must fit."""
S3_PART_BYTES_MIN: Final = 5 * MIB
"""S3 rejects multipart parts smaller than this (except the last)."""
S3_PART_BYTES_MAX: Final = 5 * 1024 * MIB
S3_PUT_BYTES_MAX: Final = 5 * 1024 * MIB
"""Largest single PutObject."""
S3_PARTS_MAX: Final = 10_000
"""Most parts in one multipart upload."""
ATTEMPTS_LIMIT: Final = 100
"""Upper bound accepted for `attempts_max`."""
LIST_PAGE_KEYS_MAX: Final = 1000
PROBE_KEY_PREFIX: Final = "~probe-"
"""Probe objects live under the store's prefix; `~` is never in a chunk name."""

_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_CONTENT_RANGE_RE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

_MISSING_CODES: Final = frozenset({"NoSuchKey", "NotFound", "404"})
_NOT_MISSING_404_CODES: Final = frozenset({"NoSuchBucket", "NoSuchUpload"})
_EXISTS_CODES: Final = frozenset({"PreconditionFailed", "BucketAlreadyOwnedByYou"})
_RETRY_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",  # a concurrent conditional write on the key; retry
        "OperationAborted",
    }
)
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_ERRORS: Final = (
    botocore.exceptions.ConnectionError,  # refused, connect timeout, DNS
    botocore.exceptions.HTTPClientError,  # reset, read timeout, response streaming error
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ChecksumError,  # corrupted in transit
    botocore.exceptions.FlexibleChecksumError,
)
_HINTS: Final = {
    "NoSuchBucket": "create the bucket, or open the store with create_bucket=True",
    "BucketAlreadyExists": "the bucket name is taken by another account; choose another",
    "AccessDenied": "check the credentials and the bucket policy",
    "InvalidAccessKeyId": "check the credentials",
    "SignatureDoesNotMatch": "check the credentials and the region",
    "NoCredentialsError": "pass access_key/secret_key or configure AWS credentials",
}


class _Kind(enum.Enum):
    """What a failed S3 call means for the caller."""

    MISSING = "missing"  # 404: the key (chunk) does not exist
    EXISTS = "exists"  # 412: a conditional create found the key taken
    RANGE = "range"  # 416: the range starts at or past the end
    RETRY = "retry"  # throttling, 5xx, connection trouble: try again
    FAIL = "fail"  # anything else: not worth retrying


class _Failure(Exception):
    """Internal: a call that failed for good, classified, with its attempt count and whether
    any of its attempts may have taken effect on the server."""

    def __init__(
        self,
        kind: _Kind,
        code: str,
        status: int | None,
        message: str,
        *,
        attempts: int,
        ambiguous: bool,
    ) -> None:
        super().__init__(code)
        self.kind = kind
        self.code = code
        self.status = status
        self.message = message
        self.attempts = attempts
        self.ambiguous = ambiguous


def _classify(exc: Exception) -> tuple[_Kind, str, int | None, str]:
    """(kind, code, HTTP status, message) of a boto3/botocore exception."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(error.get("Message", "")) or str(exc)
        if code in _MISSING_CODES or (status == 404 and code not in _NOT_MISSING_404_CODES):
            return _Kind.MISSING, code, status, message
        if code in _EXISTS_CODES or status == 412:
            return _Kind.EXISTS, code, status, message
        if code == "InvalidRange" or status == 416:
            return _Kind.RANGE, code, status, message
        if code in _RETRY_CODES or status in _RETRY_STATUSES:
            return _Kind.RETRY, code, status, message
        return _Kind.FAIL, code, status, message
    if isinstance(exc, _TRANSIENT_ERRORS):
        return _Kind.RETRY, type(exc).__name__, None, str(exc)
    return _Kind.FAIL, type(exc).__name__, None, str(exc)


def _may_have_taken_effect(exc: Exception) -> bool:
    """Whether a failed request may still have been applied by the server.

    500/502/504 and a connection lost after sending (reset, read timeout, broken reply)
    leave it unknown; throttling (503 SlowDown, 429), other 4xx and failures to connect
    mean the server refused or never saw the request."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in (500, 502, 504)
    if isinstance(exc, botocore.exceptions.ConnectionError):
        return False  # refused, connect timeout, DNS, proxy: nothing was sent
    return isinstance(exc, _TRANSIENT_ERRORS)


def _md5_etag(view: memoryview, part_bytes: int | None) -> str:
    """The ETag S3 gives an unencrypted object uploaded whole or in `part_bytes` parts."""
    if part_bytes is None:
        return hashlib.md5(view, usedforsecurity=False).hexdigest()
    starts = range(0, len(view), part_bytes)
    digests = b"".join(
        hashlib.md5(view[start : start + part_bytes], usedforsecurity=False).digest()
        for start in starts
    )
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(starts)}"


class S3ChunkStore:
    """Chunks as objects in `bucket` under `prefix` (see the module docstring)."""

    supports_append: bool = False
    supports_concat: bool = False

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        region: str = "us-east-1",
        multipart_bytes: int = 8 * MIB,
        part_bytes: int = 8 * MIB,
        attempts_max: int = 5,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        create_bucket: bool = False,
        access_key: str | None = None,
        secret_key: str | None = None,
        conditional_create: bool | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        pool_connections_max: int = 32,
    ) -> None:
        """Open the store. `conditional_create`: None probes the endpoint for
        `If-None-Match` on the first create; True/False fixes the answer."""
        _check_settings(
            bucket=bucket,
            multipart_bytes=multipart_bytes,
            part_bytes=part_bytes,
            attempts_max=attempts_max,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            access_key=access_key,
            secret_key=secret_key,
            timeouts_s=(connect_timeout_s, read_timeout_s),
            pool_connections_max=pool_connections_max,
        )
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = _key_prefix(prefix)
        self._multipart_bytes = multipart_bytes
        self._part_bytes = part_bytes
        self._attempts_max = attempts_max
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._random = random.Random()
        self._closed = False
        self._probe_lock = threading.Lock()
        self._conditional = conditional_create
        config = Config(
            region_name=region,
            # Off: our loop below is the one bounded retry policy (see the module docstring).
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=pool_connections_max,
            # Custom endpoints (MinIO, moto, 127.0.0.1) rarely have per-bucket DNS names.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        # One session per store: sessions are not thread-safe, the client made from it is.
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        if create_bucket:
            try:
                self._create_bucket(region)
            except BaseException:
                self._client.close()
                raise

    def __repr__(self) -> str:
        return (
            f"S3ChunkStore(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    # --- the interface ---------------------------------------------------------------------

    def create(self, name: str, data: bytes | memoryview) -> None:
        self._check_open("create", name)
        validate_chunk_name(name)
        view = memoryview(data).cast("B")
        if len(view) > self._part_bytes * S3_PARTS_MAX:
            raise InvalidArgument(
                f"s3 create {name}: {len(view)} bytes > part_bytes={self._part_bytes} * "
                f"{S3_PARTS_MAX} parts (bucket={self.bucket})",
                name=name,
            )
        key = self._key(name)
        conditional = self._conditional_create()
        if not conditional and self._head(key, "create (head)") is not None:
            raise ChunkExists(
                f"s3 create {name}: already exists (bucket={self.bucket}, key={key}); "
                "chunks are never replaced",
                name=name,
                bucket=self.bucket,
                key=key,
            )
        multipart = len(view) > self._multipart_bytes
        try:
            if multipart:
                self._put_multipart(key, view, conditional=conditional)
            else:
                body = data if isinstance(data, bytes) else bytes(view)
                extra = {"IfNoneMatch": "*"} if conditional else {}
                self._call(
                    "create",
                    key,
                    lambda: self._client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, **extra
                    ),
                )
        except (ChunkExists, StorageError) as exc:
            if exc.fields.get("ambiguous") and self._holds(
                key, view, self._part_bytes if multipart else None
            ):
                logger.info(
                    "s3 create: an earlier ambiguous attempt landed op=create bucket=%s key=%s",
                    self.bucket,
                    key,
                )
                return
            raise

    def read(self, name: str, offset: int, length: int) -> bytes:
        self._check_open("read", name)
        validate_read(name, offset, length)
        key = self._key(name)
        if length == 0:
            self.size(name)  # ChunkNotFound if absent
            return b""
        byte_range = f"bytes={offset}-{offset + length - 1}"

        def request() -> tuple[str | None, bytes]:
            response = self._client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            with closing(response["Body"]) as body:
                return response.get("ContentRange"), body.read()

        result = self._call_unless(_Kind.RANGE, "read", key, request)
        if result is None:
            return b""  # 416: the range starts at or past the end (an absent key is 404)
        content_range, data = result
        if content_range is None:  # the endpoint ignored Range and sent the whole object
            data = data[offset : offset + length]
        else:
            match = _CONTENT_RANGE_RE.fullmatch(content_range)
            if match is None or int(match[1]) != offset or int(match[2]) - offset + 1 != len(data):
                raise StorageError(
                    f"s3 read {name}: asked {byte_range}, got Content-Range={content_range!r} "
                    f"with {len(data)} bytes (bucket={self.bucket}, key={key})",
                    op="read",
                    bucket=self.bucket,
                    key=key,
                )
        assert len(data) <= length, (name, offset, length, len(data))
        return data

    def size(self, name: str) -> int:
        self._check_open("size", name)
        validate_chunk_name(name)
        key = self._key(name)
        response = self._call(
            "size", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key)
        )
        return int(response["ContentLength"])

    def exists(self, name: str) -> bool:
        self._check_open("exists", name)
        validate_chunk_name(name)
        return self._head(self._key(name), "exists") is not None

    def delete(self, name: str) -> bool:
        self._check_open("delete", name)
        validate_chunk_name(name)
        key = self._key(name)
        # DeleteObject answers the same for absent keys; the HEAD tells whether it existed.
        if self._head(key, "delete (head)") is None:
            return False
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def list(self, prefix: str = "") -> list[ChunkInfo]:
        self._check_open("list", prefix)
        validate_chunk_prefix(prefix)
        key_prefix = self.prefix + prefix
        # Pages are fetched one call at a time (not through a boto3 paginator) so that each
        # page is retried on its own instead of a failure restarting the whole listing.
        found: list[ChunkInfo] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                "list",
                key_prefix,
                lambda extra=extra: self._client.list_objects_v2(
                    Bucket=self.bucket, Prefix=key_prefix, MaxKeys=LIST_PAGE_KEYS_MAX, **extra
                ),
            )
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                if is_chunk_name(name):  # skip probes and foreign objects
                    found.append(ChunkInfo(name, int(item["Size"])))
            if not page.get("IsTruncated"):
                break
            next_token = page.get("NextContinuationToken")
            if not next_token or next_token == token:
                raise StorageError(
                    f"s3 list: truncated page without a new continuation token "
                    f"(bucket={self.bucket}, prefix={key_prefix})",
                    op="list",
                    bucket=self.bucket,
                    key=key_prefix,
                )
            token = next_token
        found.sort(key=lambda info: info.name)
        return found

    # --- create helpers ---------------------------------------------------------------------

    def _create_bucket(self, region: str) -> None:
        """Create the bucket; one that we already own is fine."""
        settings = {} if region == "us-east-1" else {"LocationConstraint": region}
        extra = {"CreateBucketConfiguration": settings} if settings else {}
        self._call_unless(
            _Kind.EXISTS,
            "create bucket",
            "",
            lambda: self._client.create_bucket(Bucket=self.bucket, **extra),
        )

    def _put_multipart(self, key: str, view: memoryview, *, conditional: bool) -> None:
        upload = self._call(
            "create (start multipart)",
            key,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key),
        )
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(view), self._part_bytes), start=1):
                body = bytes(view[start : start + self._part_bytes])
                response = self._call(
                    f"create (part {number})",
                    key,
                    lambda body=body, number=number: self._client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=body,
                    ),
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
            extra = {"IfNoneMatch": "*"} if conditional else {}
            self._call(
                "create (complete multipart)",
                key,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **extra,
                ),
            )
        except BaseException:
            self._abort_multipart(key, upload_id)
            raise

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                "create (abort multipart)",
                key,
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
            )
        except StreamVaultError as exc:
            # The create fails either way (the caller gets the original error); the parts
            # of an upload that could not be aborted cost storage until a lifecycle rule
            # (AbortIncompleteMultipartUpload) expires them, which operators should know.
            logger.warning(
                "s3 create: abort of a failed multipart upload failed bucket=%s key=%s "
                "upload_id=%s: %s",
                self.bucket,
                key,
                upload_id,
                exc,
            )

    def _holds(self, key: str, view: memoryview, part_bytes: int | None) -> bool:
        """Whether `key` holds exactly `view` (size and MD5 ETag): our own attempt landed.

        One HEAD without retries: it only chooses between success and the error the caller
        already has, and must not double the time a dead endpoint takes to fail."""
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False  # absent, or cannot tell: the caller keeps its original error
        if int(response["ContentLength"]) != len(view):
            return False
        etag = str(response.get("ETag", "")).strip('"').lower()
        return etag == _md5_etag(view, part_bytes)

    def _conditional_create(self) -> bool:
        with self._probe_lock:
            if self._conditional is None:
                self._conditional = self._probe_conditional_create()
                logger.info(
                    "s3 conditional create (If-None-Match) supported=%s bucket=%s endpoint=%s",
                    self._conditional,
                    self.bucket,
                    self.endpoint_url,
                )
            return self._conditional

    def _probe_conditional_create(self) -> bool:
        """Put a throwaway object twice with `If-None-Match: *`: 412 the second time means
        the endpoint honours it; success means it ignored the header."""
        shape = self._client.meta.service_model.operation_model("PutObject").input_shape
        if "IfNoneMatch" not in shape.members:
            return False  # botocore too old to send the header
        key = f"{self.prefix}{PROBE_KEY_PREFIX}{uuid.uuid4().hex}"

        def put() -> Any:
            return self._client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")

        try:
            self._call("probe conditional create", key, put)
        except StorageError as exc:
            if exc.fields.get("status") == 501 or exc.fields.get("code") == "NotImplemented":
                return False
            raise
        try:
            self._call("probe conditional create", key, put)
            supported = False
        except ChunkExists:
            supported = True
        self._call(
            "probe conditional create (delete)",
            key,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=key),
        )
        return supported

    # --- calls and retries -----------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _check_open(self, op: str, name: str) -> None:
        if self._closed:
            raise InvalidArgument(f"s3 {op} {name}: {self!r} is closed", name=name)

    def _head(self, key: str, op: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None if the key does not exist."""
        return self._call_unless(
            _Kind.MISSING, op, key, lambda: self._client.head_object(Bucket=self.bucket, Key=key)
        )

    def _call(self, op: str, key: str, request: Callable[[], T]) -> T:
        """`request()` under the retry policy; failures become streamvault errors."""
        try:
            return self._retrying(op, key, request)
        except _Failure as failure:
            raise self._error(op, key, failure) from failure.__cause__

    def _call_unless(self, kind: _Kind, op: str, key: str, request: Callable[[], T]) -> T | None:
        """Like `_call`, but a final failure of `kind` answers None."""
        try:
            return self._retrying(op, key, request)
        except _Failure as failure:
            if failure.kind is kind:
                return None
            raise self._error(op, key, failure) from failure.__cause__

    def _retrying(self, op: str, key: str, request: Callable[[], T]) -> T:
        attempt = 1
        ambiguous = False
        while True:
            try:
                return request()
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                kind, code, status, message = _classify(exc)
                ambiguous = ambiguous or _may_have_taken_effect(exc)
                if kind is not _Kind.RETRY or attempt >= self._attempts_max:
                    raise _Failure(
                        kind, code, status, message, attempts=attempt, ambiguous=ambiguous
                    ) from exc
                delay_s = self._backoff_delay_s(attempt)
                logger.warning(
                    "s3 %s: transient failure, retrying bucket=%s key=%s code=%s status=%s "
                    "attempt=%d attempts_max=%d delay_s=%.3f",
                    op,
                    self.bucket,
                    key,
                    code,
                    status,
                    attempt,
                    self._attempts_max,
                    delay_s,
                )
                time.sleep(delay_s)
                attempt += 1

    def _backoff_delay_s(self, attempt: int) -> float:
        """Capped exponential backoff with jitter in [cap/2, cap] ("equal jitter")."""
        cap_s = min(self._backoff_max_s, self._backoff_s * (2 ** (attempt - 1)))
        return cap_s / 2 + self._random.uniform(0, cap_s / 2)

    def _error(self, op: str, key: str, failure: _Failure) -> StreamVaultError:
        where = f"bucket={self.bucket}, key={key}"
        fields = {
            "op": op,
            "bucket": self.bucket,
            "key": key,
            "code": failure.code,
            "status": failure.status,
            "attempts": failure.attempts,
            "ambiguous": failure.ambiguous,
        }
        if failure.kind is _Kind.MISSING:
            return ChunkNotFound(f"s3 {op}: chunk not found ({where})", **fields)
        if failure.kind is _Kind.EXISTS:
            return ChunkExists(
                f"s3 {op}: chunk already exists ({where}); chunks are never replaced", **fields
            )
        if failure.kind is _Kind.RETRY:
            hint = "the endpoint kept failing: check endpoint_url, the network and S3's health"
        else:
            hint = _HINTS.get(failure.code, "")
        return StorageError(
            f"s3 {op}: {failure.code or 'error'} (HTTP {failure.status}) after "
            f"{failure.attempts} attempt(s) ({where}): {failure.message}"
            + (f"; hint: {hint}" if hint else ""),
            **fields,
        )


def _key_prefix(prefix: str) -> str:
    """`prefix` normalised to "" or "a/b/" (a valid chunk-name path plus a slash)."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    try:
        validate_chunk_name(stripped)
    except InvalidArgument as exc:
        raise InvalidArgument(f"s3 store prefix {prefix!r}: {exc.message}", prefix=prefix) from None
    if len(stripped) + 1 + CHUNK_NAME_BYTES_MAX > S3_KEY_BYTES_MAX:
        raise InvalidArgument(
            f"s3 store prefix {prefix!r}: {len(stripped)} bytes leaves less than "
            f"{CHUNK_NAME_BYTES_MAX} bytes of the {S3_KEY_BYTES_MAX}-byte key for chunk names",
            prefix=prefix,
        )
    return stripped + "/"


def _check_settings(
    *,
    bucket: str,
    multipart_bytes: int,
    part_bytes: int,
    attempts_max: int,
    backoff_s: float,
    backoff_max_s: float,
    access_key: str | None,
    secret_key: str | None,
    timeouts_s: tuple[float, float],
    pool_connections_max: int,
) -> None:
    """Raise `InvalidArgument` naming the first setting out of range."""
    problems = []
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
        problems.append(f"bucket={bucket!r} must be 3..63 characters of [a-z0-9.-]")
    if not S3_PART_BYTES_MIN <= part_bytes <= S3_PART_BYTES_MAX:
        problems.append(
            f"part_bytes={part_bytes} must be in [{S3_PART_BYTES_MIN}, {S3_PART_BYTES_MAX}]"
        )
    if not 0 <= multipart_bytes <= S3_PUT_BYTES_MAX:
        problems.append(f"multipart_bytes={multipart_bytes} must be in [0, {S3_PUT_BYTES_MAX}]")
    if not 1 <= attempts_max <= ATTEMPTS_LIMIT:
        problems.append(f"attempts_max={attempts_max} must be in [1, {ATTEMPTS_LIMIT}]")
    if not 0 <= backoff_s <= backoff_max_s:
        problems.append(f"need 0 <= backoff_s={backoff_s} <= backoff_max_s={backoff_max_s}")
    if (access_key is None) != (secret_key is None):
        problems.append("access_key and secret_key must be given together")
    if min(timeouts_s) <= 0 or pool_connections_max < 1:
        problems.append(
            f"timeouts_s={timeouts_s} must be > 0 and pool_connections_max="
            f"{pool_connections_max} >= 1"
        )
    if problems:
        raise InvalidArgument(f"s3 store settings: {'; '.join(problems)}", bucket=bucket)
