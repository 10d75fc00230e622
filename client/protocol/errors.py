"""The one exception tree of streamvault, grouped by what the caller does about it.

- `RetryableError`: try again (after backoff, or after refreshing a cached route).
- `FencedError`: another owner took over; stop using this object.
- `FatalError`: a bug or corruption; stop and report.
- `InvalidRequestError`: the request (or the caller's view of the object) is wrong; fix it.

Each class has a stable numeric `code` that travels on the wire in `Error` replies;
`error_from_code` turns a code back into the class. Messages name the operation, the
object and the values involved.
"""

from __future__ import annotations

from typing import Any, ClassVar


class StreamVaultError(Exception):
    """Base of every streamvault error. `fields` carries structured details."""

    code: ClassVar[int] = 1

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message or type(self).__name__)
        self.message = message or type(self).__name__
        self.fields = fields

    def __reduce__(self):  # keep fields across pickling (multiprocessing, futures)
        return (_rebuild, (type(self), self.message, self.fields))


def _rebuild(cls: type[StreamVaultError], message: str, fields: dict[str, Any]):
    return cls(message, **fields)


# --- retryable -------------------------------------------------------------------------
class RetryableError(StreamVaultError):
    code = 100


class ConnectionLost(RetryableError):
    code = 101


class RequestTimeout(RetryableError):
    code = 102


class ServiceUnavailable(RetryableError):
    """The server is starting, recovering, or not yet registered; retry shortly."""

    code = 103


class WrongHost(RetryableError):
    """The segment's container is owned by another worker; refresh the route and retry."""

    code = 104


# --- fenced ----------------------------------------------------------------------------
class FencedError(StreamVaultError):
    code = 200


class Fenced(FencedError):
    code = 201


# --- fatal -----------------------------------------------------------------------------
class FatalError(StreamVaultError):
    code = 300


class DataCorruption(FatalError):
    code = 301


class InternalError(FatalError):
    code = 302


class StorageError(FatalError):
    """An I/O error on durable storage: the process that saw it stops (fail-stop)."""

    code = 303


# --- invalid request -------------------------------------------------------------------
class InvalidRequestError(StreamVaultError):
    code = 400


class InvalidMessage(InvalidRequestError):
    code = 401


class UnsupportedVersion(InvalidRequestError):
    """The peers share no protocol version; `fields` has the server's supported range."""

    code = 402


class EventTooLarge(InvalidRequestError):
    code = 403


class InvalidArgument(InvalidRequestError):
    code = 404


class AuthFailed(InvalidRequestError):
    code = 405


class NoSuchScope(InvalidRequestError):
    code = 410


class NoSuchStream(InvalidRequestError):
    code = 411


class NoSuchSegment(InvalidRequestError):
    code = 412


class NoSuchReaderGroup(InvalidRequestError):
    code = 413


class NoSuchLedger(InvalidRequestError):
    """A bookie was asked to add to or fence a ledger it has deleted (the log was truncated
    below it: only an owner that is no longer the owner still writes there)."""

    code = 414


class SegmentSealed(InvalidRequestError):
    code = 420


class SegmentTruncated(InvalidRequestError):
    """Read below the segment's start; `fields['start_offset']` is where data begins."""

    code = 421


class InvalidEventNumber(InvalidRequestError):
    code = 422


class ConditionalCheckFailed(InvalidRequestError):
    """A conditional append's expected offset was stale; `fields['current_offset']`."""

    code = 423


class StreamNotSealed(InvalidRequestError):
    code = 424


class ScopeNotEmpty(InvalidRequestError):
    code = 425


class StreamSealed(InvalidRequestError):
    code = 426


class ChunkNotFound(InvalidRequestError):
    """An LTS chunk does not exist (never created, or deleted)."""

    code = 430


class ChunkExists(InvalidRequestError):
    """An LTS chunk create found the name taken: chunks are never overwritten."""

    code = 431


def _all_subclasses(cls: type[StreamVaultError]) -> list[type[StreamVaultError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_CODE: dict[int, type[StreamVaultError]] = {
    cls.code: cls for cls in _all_subclasses(StreamVaultError)
}
assert len(ERRORS_BY_CODE) == len(_all_subclasses(StreamVaultError)), "error codes collide"


def error_from_code(code: int, message: str, fields: dict[str, Any] | None = None):
    """The exception for a wire error code; unknown codes become `InternalError`."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return InternalError(f"unknown error code {code}: {message}", code=code)
    return cls(message, **(fields or {}))
