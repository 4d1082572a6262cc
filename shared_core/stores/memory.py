"""A ledger in this process's memory: the default, gone when the process ends."""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..budget import DEFAULT_RETENTION_S, IDLE_BATCH, Budget, ScopeBooks, ScopeState, check_retention
from .base import LedgerStore, id_taken, no_budget, unknown_reservation
from .urls import StoreURL

__all__ = ["MemoryStore"]

#: memory:// takes no options.
URL_OPTIONS: frozenset[str] = frozenset()


@dataclass
class _Hold:
    scopes: tuple[str, ...]
    amount: int
    expires_at: float
    status: str = "open"


class MemoryStore(LedgerStore):
    """A thread-safe ledger in this process's memory (the default; gone when the process ends)."""

    def __init__(self, clock: Callable[[], float] = time.time, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._retention_s = check_retention(retention_s)
        self._books: dict[str, ScopeBooks] = {}
        self._touched: dict[str, float] = {}  # last activity of each forgettable scope
        self._idle: list[tuple[float, str]] = []  # heap of forgettable scopes by when they may go
        self._queued: dict[str, float] = {}  # each queued scope's live heap entry (others are stale)
        self._open: dict[str, _Hold] = {}
        self._done: dict[str, _Hold] = {}  # lapsed, committed or released, kept for retention_s
        self._expiry: list[tuple[float, str]] = []  # heap of open holds by expiry
        self._forget: deque[tuple[float, str]] = deque()  # finished holds, oldest first

    def _sweep(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, rid = heapq.heappop(self._expiry)
            if rid in self._open:
                hold = self._finish(rid, "lapsed", now)
                for b in self._present(hold.scopes):
                    b.reserved -= hold.amount
                    b.expired += 1
        while self._forget and self._forget[0][0] <= now:
            self._done.pop(self._forget.popleft()[1], None)
        for _ in range(IDLE_BATCH):
            if not self._idle or self._idle[0][0] > now:
                break
            queued, scope = heapq.heappop(self._idle)
            if self._queued.get(scope) != queued:
                continue  # superseded by an earlier entry for the same scope
            del self._queued[scope]
            books = self._books.get(scope)
            if books is None or books.idle_ttl_s is None:
                self._touched.pop(scope, None)
                continue
            due = self._touched[scope] + books.idle_ttl_s
            if books.reserved:  # still holding money: look again once its holds could have lapsed
                due = max(due, now + books.idle_ttl_s)
            if due > now:
                self._queue(scope, due)
                continue
            del self._books[scope], self._touched[scope]

    def _queue(self, scope: str, due: float) -> None:
        if due < self._queued.get(scope, math.inf):
            self._queued[scope] = due
            heapq.heappush(self._idle, (due, scope))

    def _touch(self, books: Sequence[ScopeBooks], now: float) -> None:
        for b in books:
            if b.idle_ttl_s is not None:
                self._touched[b.scope] = now

    def _present(self, scopes: Sequence[str]) -> list[ScopeBooks]:
        """The books of those of `scopes` the ledger still has (a forgotten scope is skipped)."""
        return [self._books[s] for s in scopes if s in self._books]

    def _finish(self, rid: str, status: str, now: float) -> _Hold:
        hold = self._open.pop(rid)
        hold.status = status
        self._done[rid] = hold
        self._forget.append((now + self._retention_s, rid))
        return hold

    def _scope(self, scope: str, now: float) -> ScopeBooks:
        books = self._books.get(scope)
        if books is None:
            raise no_budget(scope)
        books.roll(now)
        return books

    def _set_budget(
        self, scope: str, budget: Budget, reset: bool, only_if_absent: bool, idle_ttl_s: float | None
    ) -> bool:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            books = self._books.get(scope)
            if books is None:
                books = self._books[scope] = ScopeBooks(scope=scope, budget=budget, period_start=now)
            elif only_if_absent:
                return False
            else:
                books.rebudget(budget, now, reset)
            if idle_ttl_s is not None:
                self._queue(scope, now + idle_ttl_s)
            books.idle_ttl_s = idle_ttl_s
            self._touch([books], now)
            return True

    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            return [self._scope(s, now).snapshot() if s in self._books else None for s in scopes]

    def scopes(self) -> list[str]:
        with self._lock:
            self._sweep(self._clock())
            return sorted(self._books)

    def _reserve(self, reservation_id: str, chain: tuple[str, ...], nanos: int, ttl_s: float) -> None:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            if reservation_id in self._open or reservation_id in self._done:
                hold = self._open.get(reservation_id)
                if hold is not None and (hold.scopes, hold.amount) == (chain, nanos):
                    return
                raise id_taken(reservation_id)
            books = [self._scope(s, now) for s in chain]
            for b in books:
                b.check(nanos)
            for b in books:
                b.reserved += nanos
            self._touch(books, now)
            self._open[reservation_id] = _Hold(chain, nanos, now + ttl_s)
            heapq.heappush(self._expiry, (now + ttl_s, reservation_id))

    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            hold = self._open.get(reservation_id) or self._done.get(reservation_id)
            if hold is None:
                raise unknown_reservation(reservation_id)
            if hold.status == "committed":
                return False
            was_open = hold.status == "open"
            if was_open:
                self._finish(reservation_id, "committed", now)
            hold.status = "committed"
            books = self._present(hold.scopes)
            for b in books:
                b.roll(now)
                if was_open:
                    b.reserved -= hold.amount
                b.charge(nanos, model)
            self._touch(books, now)
            return True

    def release(self, reservation_id: str) -> bool:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            if reservation_id not in self._open:
                return False
            hold = self._finish(reservation_id, "released", now)
            books = self._present(hold.scopes)
            for b in books:
                b.roll(now)
                b.reserved -= hold.amount
                b.released += 1
            self._touch(books, now)
            return True

    def _adjust_lambda(self, scope: str, value: float) -> None:
        with self._lock:
            self._scope(scope, self._clock()).lam = value

    @property
    def url(self) -> str:
        # A memory ledger is this object in this process: "memory://<pid>/<object id>".
        return f"memory://{os.getpid()}/{id(self):x}"

    def open_reservations(self) -> int:
        with self._lock:
            self._sweep(self._clock())
            return len(self._open)


def open_url(url: StoreURL, must_exist: bool, **options: Any) -> MemoryStore:
    """A new memory ledger for memory:// (`must_exist` is moot: it starts empty either way)."""
    if url.netloc or url.path:
        raise url.malformed("memory:// takes no host or path")
    return MemoryStore(**options)
