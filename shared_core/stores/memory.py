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

from ..budget import (
    DEFAULT_MAX_FINISHED,
    DEFAULT_RETENTION_S,
    IDLE_BATCH,
    Budget,
    ScopeBooks,
    ScopeState,
    check_max_finished,
    check_retention,
)
from .base import Committed, LedgerStore, Pace, id_taken, no_budget, paced, scope_names, unknown_reservation
from .urls import StoreURL

__all__ = ["MemoryStore"]

#: memory:// takes no options.
URL_OPTIONS: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Hold:
    scopes: tuple[str, ...]
    amount: int
    expires_at: float


class MemoryStore(LedgerStore):
    """A thread-safe ledger in this process's memory (the default; gone when the process ends).

    `retention_s` and `max_finished` bound how long and how many finished reservations are
    remembered (see LedgerStore). Each costs about 290 bytes once the bound is reached (its id, its
    place in the order, and the room CPython keeps in a dict that entries leave): 29 MB at the
    default 100,000, the same after 1M or 2M requests (benchmarks/ledger_retention.py).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        retention_s: float = DEFAULT_RETENTION_S,
        max_finished: int = DEFAULT_MAX_FINISHED,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._retention_s = check_retention(retention_s)
        self._max_finished = check_max_finished(max_finished)
        self._books: dict[str, ScopeBooks] = {}
        self._touched: dict[str, float] = {}  # last activity of each forgettable scope
        self._idle: list[tuple[float, str]] = []  # heap of forgettable scopes by when they may go
        self._queued: dict[str, float] = {}  # each queued scope's live heap entry (others are stale)
        self._open: dict[str, _Hold] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of open holds by expiry (some finished since)
        # Finished reservations: None for a committed one (a repeat only needs to know it), the scopes
        # of a released or lapsed one (a late commit charges them). Ids only, never whole holds.
        self._done: dict[str, tuple[str, ...] | None] = {}
        # Their ids and forget times (end + retention_s) in the order they ended. A late commit moves
        # its id to the end: the earlier place stays behind, stale, marked in `_moved`.
        self._order: deque[str] = deque()
        self._until: deque[float] = deque()
        self._moved: set[str] = set()

    def _sweep(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires, rid = heapq.heappop(self._expiry)
            hold = self._open.get(rid)
            if hold is not None and hold.expires_at == expires:  # else finished, or its id reused since
                del self._open[rid]
                self._finish(rid, hold.scopes, now)
                for b in self._present(hold.scopes):
                    b.reserved -= hold.amount
                    b.expired += 1
        while self._until and self._until[0] <= now:
            self._forget_oldest()
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

    def _finish(self, rid: str, scopes: tuple[str, ...] | None, now: float) -> None:
        """Remember that `rid` ended now: committed (`scopes` None), or released or lapsed."""
        if rid in self._done:
            self._moved.add(rid)
        self._done[rid] = scopes
        self._order.append(rid)
        self._until.append(now + self._retention_s)
        while len(self._done) > self._max_finished:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        rid = self._order.popleft()
        self._until.popleft()
        if rid in self._moved:  # the place it had before its late commit
            self._moved.remove(rid)
        else:
            del self._done[rid]

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
        scopes = scope_names(scopes)
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
            if len(self._expiry) > 2 * len(self._open) + 64:
                # Most entries are of holds that ended before their expiry: rebuild the heap from the
                # open ones, so that it stays bounded by what is open (a rebuild costs len(open), and
                # at least len(open) + 64 reserves come between two).
                self._expiry = [(h.expires_at, rid) for rid, h in self._open.items()]
                heapq.heapify(self._expiry)
            else:
                heapq.heappush(self._expiry, (now + ttl_s, reservation_id))

    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            return self._charge(reservation_id, nanos, model, now)

    def _commit_books(
        self, reservation_id: str, nanos: int, model: str | None, scopes: tuple[str, ...], pace: Pace | None
    ) -> Committed:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            present = [self._scope(s, now) for s in scopes if s in self._books]
            before = [b.snapshot() for b in present]
            thetas = paced(before, pace)  # before anything changes: a pace that fails leaves the books as they were
            charged = self._charge(reservation_id, nanos, model, now)
            if charged:
                for b, theta in zip(present, thetas, strict=True):
                    if theta is not None:
                        b.lam = theta
            return Committed(charged, before, [b.snapshot() for b in present])

    def _charge(self, reservation_id: str, nanos: int, model: str | None, now: float) -> bool:
        """commit, under the lock and swept."""
        hold = self._open.pop(reservation_id, None)
        if hold is not None:
            scopes = hold.scopes
        elif reservation_id in self._done:
            ended = self._done[reservation_id]
            if ended is None:
                return False  # committed before
            scopes = ended
        else:
            raise unknown_reservation(reservation_id)
        self._finish(reservation_id, None, now)
        books = self._present(scopes)
        for b in books:
            b.roll(now)
            if hold is not None:
                b.reserved -= hold.amount
            b.charge(nanos, model)
        self._touch(books, now)
        return True

    def _release(self, reservation_id: str) -> bool:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            hold = self._open.pop(reservation_id, None)
            if hold is None:
                return False
            self._finish(reservation_id, hold.scopes, now)
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

    def remembered_since(self) -> float:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            # Forgetting goes oldest first, so all that was forgotten ended by the oldest end still here.
            return (self._until[0] if self._until else now) - self._retention_s


def open_url(url: StoreURL, must_exist: bool, **options: Any) -> MemoryStore:
    """A new memory ledger for memory:// (`must_exist` is moot: it starts empty either way)."""
    if url.netloc or url.path:
        raise url.malformed("memory:// takes no host or path")
    return MemoryStore(**options)
