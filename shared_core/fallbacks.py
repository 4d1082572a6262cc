"""Which failures move a request to the next candidate, and the error raised when every candidate failed.

A failure is classified once, by what a different candidate could do about it:

- "transient" — rate limits (429), overload (529), server errors (5xx), timeouts, dropped
  connections: another provider is likely to answer, so the request falls back (logged at WARNING).
- "misconfigured" — authentication, permission or not-found errors (401, 403, 404): this
  candidate's key, URL or model name is wrong, so the request falls back, and the error is
  logged at ERROR on every occurrence: a silently skipped premium model is a bug to fix.
- "invalid_request" — the provider rejected the request itself (400, 422): the next candidate
  would repeat it, so it is raised at once.
- "programming" — TypeError, AttributeError and the like, from code rather than a provider: raised
  at once.
- "unknown" — anything else falls back (logged at WARNING).

Status codes are read from the exception's `status_code` (openai, anthropic), its `response`
(httpx), or its `code`; timeouts and connection errors by their standard bases or type names.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from .errors import AllCandidatesFailed

__all__ = ["AllCandidatesFailed", "Attempt", "ErrorKind", "classify", "falls_back", "may_be_billed"]

logger = logging.getLogger("omniroute")


class ErrorKind:
    """The kinds of failure `classify` tells apart (plain strings, stable in logs and metadata)."""

    TRANSIENT = "transient"
    MISCONFIGURED = "misconfigured"
    INVALID_REQUEST = "invalid_request"
    PROGRAMMING = "programming"
    UNKNOWN = "unknown"


_PROGRAMMING = (TypeError, AttributeError, NameError, ImportError, NotImplementedError, AssertionError,
                RecursionError)
_MISCONFIGURED = {401, 403, 404}
_INVALID = {400, 413, 422}


def _status(error: BaseException) -> int | None:
    for value in (
        getattr(error, "status_code", None),
        getattr(getattr(error, "response", None), "status_code", None),
        getattr(error, "code", None),
        getattr(error, "status", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def classify(error: BaseException) -> str:
    """The ErrorKind of a candidate's failure (see the module docstring for the rules)."""
    status = _status(error)
    if status is not None:
        if status in _MISCONFIGURED:
            return ErrorKind.MISCONFIGURED
        if status in _INVALID:
            return ErrorKind.INVALID_REQUEST
        return ErrorKind.TRANSIENT  # 408, 409, 425, 429, 5xx, 529, ...
    # asyncio.TimeoutError is TimeoutError from Python 3.11; before, it is its own class. Read from
    # sys.modules so that routing never imports asyncio (and with it ssl) for this check.
    asyncio = sys.modules.get("asyncio")
    if isinstance(error, (TimeoutError, ConnectionError)) or (
        asyncio is not None and isinstance(error, asyncio.TimeoutError)
    ):
        return ErrorKind.TRANSIENT
    names = " ".join(cls.__name__ for cls in type(error).__mro__)
    if any(word in names for word in ("Timeout", "Connection", "RateLimit", "Overloaded", "ServiceUnavailable")):
        return ErrorKind.TRANSIENT
    if any(word in names for word in ("Authentication", "PermissionDenied", "NotFound")):
        return ErrorKind.MISCONFIGURED
    if any(word in names for word in ("BadRequest", "UnprocessableEntity", "InvalidRequest")):
        return ErrorKind.INVALID_REQUEST
    if isinstance(error, _PROGRAMMING):
        return ErrorKind.PROGRAMMING
    return ErrorKind.UNKNOWN


# Failures before the request was sent whole, by class name (any in an error's MRO or its chain of
# causes): the provider never saw it. httpx (and openai / anthropic on top of it), urllib3 and
# requests, aiohttp, botocore; a failed name lookup, a refused connection, a write that failed.
_UNSENT = frozenset({
    "ConnectTimeout", "ConnectTimeoutError", "ConnectionTimeoutError", "PoolTimeout", "WriteTimeout", "ConnectError",
    "NewConnectionError", "NameResolutionError", "ClientConnectorError", "EndpointConnectionError",
    "ConnectionRefusedError", "gaierror", "WriteError", "BrokenPipeError", "LocalProtocolError",
    "ClientConnectionResetError",  # aiohttp: "Cannot write to closing transport"
})
# A connection lost while waiting for the answer, by class name: httpx's ReadError and
# RemoteProtocolError ("Server disconnected without sending a response", a body cut short), anyio's
# BrokenResourceError, aiohttp's ServerDisconnectedError and ClientPayloadError, urllib3's
# ProtocolError, http.client's RemoteDisconnected and IncompleteRead. A wrapper's own name (openai's
# APIConnectionError wraps whatever failed while sending, a closed client or a bad URL too) is no sign.
_LOST = frozenset({
    "ReadError", "RemoteProtocolError", "BrokenResourceError", "ServerDisconnectedError", "ClientPayloadError",
    "ProtocolError", "RemoteDisconnected", "IncompleteRead",
})


def may_be_billed(error: BaseException) -> bool:
    """Whether a failed attempt may still be billed: its request may have reached the provider, which
    goes on writing (and billing) the answer whether or not anyone reads it — a timeout while waiting
    for the answer, or a connection lost while waiting for it (a reset, the server disconnecting, a
    body cut short; an async client's connection left from a closed event loop, which does send).

    False for an error response (it has a status code), for failures before the request was sent
    whole — a failed name lookup, a refused connection, a connect, pool or write timeout, a failed
    write: the error itself or any error it was raised from (`raise ... from`, as httpx, openai,
    anthropic and LangChain chain theirs, or wrapped as urllib3's `reason` and requests' first
    argument) — and for other errors (a closed client, a bad URL, a bug, a malformed answer the
    client rejected). Only explicit causes are read: an exception's implicit `__context__` may be
    whatever its caller happened to be handling.
    """
    if _status(error) is not None:
        return False
    asyncio = sys.modules.get("asyncio")
    seen: BaseException | None = error
    sent = False
    for _ in range(8):  # the chain of causes, bounded (a cycle is possible)
        if seen is None:
            break
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & _UNSENT:
            return False
        timed_out = isinstance(seen, TimeoutError) or any("Timeout" in n for n in names) or (
            asyncio is not None and isinstance(seen, asyncio.TimeoutError))
        lost = bool(names & _LOST) or isinstance(seen, (ConnectionResetError, ConnectionAbortedError))
        sent = sent or timed_out or lost or (seen is not error and _stale_loop(seen))
        seen = _cause(seen)
    return sent


def _stale_loop(error: BaseException) -> bool:
    """An HTTP client's error from a pooled connection made on an event loop since closed (a client
    reused across `asyncio.run` calls): the request is written on it, then reading the answer fails."""
    return type(error) is RuntimeError and str(error) == "Event loop is closed"


def _cause(error: BaseException) -> BaseException | None:
    """The error `error` was raised from, or wraps: `raise ... from`, urllib3's `reason`, requests' first argument."""
    if error.__cause__ is not None:
        return error.__cause__
    for wrapped in (getattr(error, "reason", None), error.args[0] if error.args else None):
        if isinstance(wrapped, BaseException):
            return wrapped
    return None


def falls_back(kind: str) -> bool:
    """Whether a failure of this kind moves the request to the next candidate."""
    return kind not in (ErrorKind.INVALID_REQUEST, ErrorKind.PROGRAMMING)


@dataclass(frozen=True)
class Attempt:
    """One failed call: the candidate, the kind of failure, the error itself, and the USD it was charged.

    `charged_usd` is the attempt's worst case when its provider may bill it (it timed out waiting
    for the answer, lost its connection without one, or was given up on), else 0 (the hold was
    released).
    """

    candidate: str
    kind: str
    error: BaseException
    charged_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record for response metadata: candidate, kind, error type and message, USD charged."""
        return {"model": self.candidate, "kind": self.kind, "error": type(self.error).__name__,
                "message": str(self.error)[:500], "charged_usd": self.charged_usd}


