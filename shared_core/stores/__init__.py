"""Ledger stores, peers chosen by URL: memory:// (default), sqlite:///path.db, redis://host:port/db,
postgresql://user@host:port/db.

`base` holds the contract and the argument checks all stores share, `urls` the registry of
schemes. Adding a store takes one module here and one line in `urls.STORES`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .base import LedgerStore
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .urls import SCHEMES, STORE_URLS, StoreURL, malformed

__all__ = ["open_store", "LedgerStore", "MemoryStore", "SQLiteStore", "STORE_URLS"]


def open_store(
    target: str | LedgerStore | None = None, *, must_exist: bool = False, **options: Any
) -> LedgerStore:
    """The ledger store a URL names (memory:// when None); a LedgerStore is returned as it is.

    `options` (clock, retention_s, max_finished) go to the store's constructor. Paths follow SQLAlchemy:
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
    url = StoreURL.parse(target)
    store = SCHEMES.get(url.scheme)
    if store is None:
        if not url.scheme:
            raise malformed(target, "no scheme (for a file, write sqlite:///" + target + ")")
        raise malformed(target, f"unknown scheme {url.scheme + '://'!r}")
    try:
        module = import_module(f"{__name__}.{store.module}")
    except ImportError as e:
        if store.needs is None:
            raise
        raise ImportError(f"{store.schemes[0]}:// ledgers need {store.needs}") from e
    url.check_options(module.URL_OPTIONS)
    opened: LedgerStore = module.open_url(url, must_exist, **options)
    return opened
