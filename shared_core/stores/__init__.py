"""Ledger stores chosen by URL: memory:// (default), sqlite:///path.db, redis://host:port/db,
postgresql://user@host:port/db."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..budget import LedgerStore, MemoryStore
from .sqlite import SQLiteStore

__all__ = ["open_store", "SQLiteStore", "STORE_URLS"]

#: The accepted URL forms, for help texts and error messages.
STORE_URLS = ("memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, redis://host:6379/0[?prefix=app:] "
              "or postgresql://user@host:5432/db[?schema=omniroute]")

_OPTIONS = {"sqlite": {"synchronous"}, "redis": {"prefix"}, "rediss": {"prefix"}, "postgresql": {"schema"},
            "postgres": {"schema"}}


def open_store(
    target: str | LedgerStore | None = None, *, must_exist: bool = False, **options: Any
) -> LedgerStore:
    """The ledger store a URL names (memory:// when None); a LedgerStore is returned as it is.

    `options` (clock, retention_s) go to the store's constructor. Paths follow SQLAlchemy:
    three slashes for a relative path, four for an absolute one. With `must_exist=True` a
    sqlite:// URL naming a missing file, or a postgresql:// URL naming a schema that holds no
    ledger, raises FileNotFoundError (its `filename` names what is missing) instead of creating an
    empty ledger; redis:// ignores it (its keys are created on first use).
    """
    if target is None:
        return MemoryStore(**options)
    if isinstance(target, LedgerStore):
        if options:
            raise TypeError("store options apply only when the store is given as a URL")
        return target
    if not isinstance(target, str):
        raise TypeError(f"store must be a LedgerStore or a URL string, got {type(target).__name__}")
    scheme, netloc, path, query = _split(target)
    if scheme == "memory":
        if netloc or path:
            raise _malformed(target, "memory:// takes no host or path")
        return MemoryStore(**options)
    if scheme == "sqlite":
        if netloc:
            raise _malformed(target, f"a SQLite ledger is a local file, but {netloc!r} names a host")
        if not path.removeprefix("/"):
            raise _malformed(target, "no file path")
        file = path.removeprefix("/")
        if must_exist and not Path(file).exists():
            raise FileNotFoundError(errno.ENOENT, "no SQLite ledger file", file)
        return SQLiteStore(file, **query, **options)
    if scheme in ("redis", "rediss"):
        return _redis(target, query, options)
    if scheme in ("postgresql", "postgres"):
        return _postgres(target, query, {**options, "create": not must_exist})
    if not scheme:
        raise _malformed(target, "no scheme (for a file, write sqlite:///" + target + ")")
    raise _malformed(target, f"unknown scheme {scheme + '://'!r}")


def _split(url: str) -> tuple[str, str, str, dict[str, str]]:
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as e:
        raise _malformed(url, str(e)) from e
    scheme = parts.scheme.lower()
    query = dict(pairs)
    if len(query) != len(pairs):
        raise _malformed(url, "an option is given twice")
    unknown = set(query) - _OPTIONS.get(scheme, set())
    if unknown:
        allowed = sorted(_OPTIONS.get(scheme, set())) or "none"
        raise _malformed(url, f"unknown option(s) {sorted(unknown)} (allowed: {allowed})")
    if parts.fragment:
        raise _malformed(url, "a URL fragment ('#...') means nothing here")
    return scheme, parts.netloc, parts.path, query


def _redis(url: str, query: dict[str, str], options: dict[str, Any]) -> LedgerStore:
    parts = urlsplit(url)
    if not parts.hostname:
        raise _malformed(url, "no host")
    try:
        parts.port  # noqa: B018 - urllib validates the port only when it is read
    except ValueError as e:
        raise _malformed(url, str(e)) from e
    db = parts.path.removeprefix("/")
    if db and not db.isdigit():
        raise _malformed(url, f"the database must be a number, got {db!r}")
    try:
        from .redis import RedisStore
    except ImportError as e:
        raise ImportError("redis:// ledgers need the redis package: pip install 'omniroute[redis]'") from e
    return RedisStore.from_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), **query, **options)


def _postgres(url: str, query: dict[str, str], options: dict[str, Any]) -> LedgerStore:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - urllib validates the port only when it is read
    except ValueError as e:
        raise _malformed(url, str(e)) from e
    try:
        from .postgres import PostgresStore
    except ImportError as e:
        raise ImportError("postgresql:// ledgers need psycopg: pip install 'omniroute[postgres]'") from e
    # libpq takes the URL itself (user, password, host, port, database); the options are the store's.
    return PostgresStore(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), **query, **options)


def _malformed(url: str, why: str) -> ValueError:
    return ValueError(f"malformed ledger store URL {url!r}: {why}; use {STORE_URLS}")
