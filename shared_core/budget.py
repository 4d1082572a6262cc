"""Budgets and the ledger that keeps them: reserve → commit | release, per nested scope.

Every store keeps money as whole nano-dollars (10⁻⁹ USD). Integers make sums exact — a
million commits add up to the cent, in any order, in Python, SQLite and Redis alike — and a
nano-dollar is below the cost of a handful of tokens of any priced model, where micro-dollars
are not (100 tokens of a $0.10-per-million model cost $0.00001). One amount may be at most
MAX_USD = 2⁵¹ nano-dollars (≈ $2.25 million): below it a dollar float converts back to its exact
nano-dollar count, and Redis scripts, which count in doubles, stay exact with room to spare."""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .errors import BudgetExceeded, LedgerUnavailable, UnknownReservation, UnknownScope

__all__ = [
    "Budget",
    "BudgetExceeded",
    "UnknownScope",
    "LedgerUnavailable",
    "ScopeState",
    "ScopeBooks",
    "LedgerStore",
    "MemoryStore",
    "scope_chain",
    "check_reservation",
    "check_retention",
    "to_nanos",
    "to_usd",
    "NANOS_PER_USD",
    "MAX_USD",
    "DEFAULT_RETENTION_S",
    "MIN_IDLE_TTL_S",
    "check_idle_ttl",
]

#: Nano-dollars per US dollar: the ledgers' unit of account.
NANOS_PER_USD = 10**9
#: The largest budget or amount a ledger takes (2⁵¹ nano-dollars, ≈ $2,251,799).
MAX_USD = 2**51 / NANOS_PER_USD
#: Limits on scope names (client-supplied session ids end up here).
MAX_SCOPE_CHARS = 512
MAX_SCOPE_DEPTH = 8
#: Bounds on budget pacing and periods.
MAX_HORIZON = 10**12
MIN_PERIOD_S = 1e-3
MAX_PERIOD_S = 100 * 365.25 * 86_400.0
#: How long a finished reservation is remembered, so a repeated commit is recognised (a day).
DEFAULT_RETENTION_S = 86_400.0
#: The shortest idle time after which a scope may be forgotten (see LedgerStore.set_budget).
MIN_IDLE_TTL_S = 1.0
#: How many idle scopes one ledger operation forgets at most: a backlog never stalls a request.
IDLE_BATCH = 1_000


def to_nanos(usd: float, what: str = "amount") -> int:
    """US dollars as whole nano-dollars (nearest); ValueError for NaN, ±∞, < 0 or > MAX_USD."""
    usd = float(usd)
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} must be a finite number of USD >= 0, got {usd}")
    if usd > MAX_USD:
        raise ValueError(f"{what} of {usd} USD exceeds the largest amount a ledger holds exactly ({MAX_USD:.0f} USD)")
    return round(usd * NANOS_PER_USD)


def to_usd(nanos: int) -> float:
    """Whole nano-dollars as US dollars (to_nanos(to_usd(n)) == n for every amount a ledger holds)."""
    return nanos / NANOS_PER_USD


class Budget(BaseModel):
    """A spending limit in US dollars, paced over requests or seconds, optionally reset every period."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    usd: float = Field(description="The most this scope may spend (per period, when periodic).")
    horizon: int | None = Field(None, description="Requests the budget should last; None = unknown.")
    horizon_s: float | None = Field(None, description="Seconds the budget should last (pacing by time).")
    period_s: float | None = Field(None, description="Seconds after which spend resets ($50/day: 86400).")

    @field_validator("usd")
    @classmethod
    def _usd_valid(cls, v: float) -> float:
        to_nanos(v, "budget usd")
        return float(v) + 0.0  # -0.0 reads as 0.0

    @field_validator("usd", "horizon", "horizon_s", "period_s", mode="before")
    @classmethod
    def _not_bool(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, bool):
            raise ValueError(f"{info.field_name} must be a number, got {v!r}")
        return v

    @field_validator("horizon")
    @classmethod
    def _horizon_valid(cls, v: int | None) -> int | None:
        if v is not None and not 0 < v <= MAX_HORIZON:
            raise ValueError(f"horizon must be a number of requests in 1..{MAX_HORIZON}, got {v}")
        return v

    @field_validator("horizon_s", "period_s")
    @classmethod
    def _period_valid(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and not (MIN_PERIOD_S <= v <= MAX_PERIOD_S):
            raise ValueError(f"{info.field_name} must be a number of seconds in [{MIN_PERIOD_S}, {MAX_PERIOD_S:.0f}], "
                             f"got {v}")
        return v


@dataclass
class ScopeState:
    """A snapshot of one scope's books (money in USD; counts and spend are for the current period)."""

    scope: str
    budget: Budget
    committed: float = 0.0
    reserved: float = 0.0
    requests: int = 0
    lam: float | None = None
    period_start: float = 0.0
    by_model: dict[str, float] = field(default_factory=dict)
    calls_by_model: dict[str, int] = field(default_factory=dict)
    released: int = 0
    expired: int = 0
    idle_ttl_s: float | None = None

    @property
    def remaining(self) -> float:
        """Money neither spent nor held by an open reservation (exact to the nano-dollar)."""
        budget, committed, reserved = (
            round(usd * NANOS_PER_USD) for usd in (self.budget.usd, self.committed, self.reserved)
        )
        return to_usd(max(0, budget - committed - reserved))

    @property
    def overdrawn(self) -> float:
        """Money spent beyond the budget (0.0 when not; exact to the nano-dollar).

        Only committed spend counts: a commit records what a provider really billed, so one that
        arrives after its hold lapsed, or bills more than was held, can pass the budget. An
        overdrawn scope refuses every hold of a positive amount until its period rolls over or
        its budget is raised; holds of 0 USD are still granted.
        """
        budget, committed = (round(usd * NANOS_PER_USD) for usd in (self.budget.usd, self.committed))
        return to_usd(max(0, committed - budget))

    @property
    def remaining_requests(self) -> int | None:
        """Requests left of the horizon (at least 1), or None when the horizon is unknown."""
        if self.budget.horizon is None:
            return None
        return max(1, self.budget.horizon - self.requests)


@dataclass
class ScopeBooks:
    """One scope's mutable books in nano-dollars, with the rules every Python-side store applies."""

    scope: str
    budget: Budget
    period_start: float
    committed: int = 0
    reserved: int = 0
    requests: int = 0
    released: int = 0
    expired: int = 0
    lam: float | None = None
    spend: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    idle_ttl_s: float | None = None

    def roll(self, now: float) -> bool:
        """Start a new period when the current one is over (spend and counts reset); True if it did."""
        period = self.budget.period_s
        if not period or now - self.period_start < period:
            return False
        self.period_start += period * math.floor((now - self.period_start) / period)
        self.committed = self.requests = self.released = self.expired = 0
        self.spend, self.calls = {}, {}
        return True

    def rebudget(self, budget: Budget, now: float, reset: bool = False) -> bool:
        """Give the books a new budget by the rule of LedgerStore.set_budget; True if spend was zeroed.

        The books first roll under the budget they had, then: `reset` zeroes the period's spend
        and counts and restarts the period now; otherwise a changed `period_s` (none → some,
        some → none, or another length) restarts the period now and keeps its spend; an
        unchanged one keeps both. Open holds (`reserved`) and λ are kept in every case.
        """
        zeroed = self.roll(now)
        if reset:
            self.committed = self.requests = self.released = self.expired = 0
            self.spend, self.calls = {}, {}
            self.period_start = now
            zeroed = True
        elif budget.period_s != self.budget.period_s:
            self.period_start = now
        self.budget = budget
        return zeroed

    def left(self) -> int:
        """Nano-dollars neither spent nor held (negative after a late commit overspent)."""
        return to_nanos(self.budget.usd) - self.committed - self.reserved

    def check(self, amount: int) -> None:
        """Raise BudgetExceeded unless `amount` nano-dollars fit what is left.

        A hold of 0 always fits, even in an exhausted or overdrawn scope (left < 0): it takes
        nothing from anyone, and a $0 model must stay usable once the money is gone.
        """
        left = self.left()
        if amount > 0 and amount > left:
            raise BudgetExceeded.no_room(self.scope, amount, left)

    def charge(self, actual: int, model: str | None) -> None:
        """Record `actual` nano-dollars spent on one request by `model`."""
        self.committed += actual
        self.requests += 1
        if model is not None:
            self.spend[model] = self.spend.get(model, 0) + actual
            self.calls[model] = self.calls.get(model, 0) + 1

    def snapshot(self) -> ScopeState:
        """The books in dollars, as callers see them."""
        return ScopeState(
            scope=self.scope, budget=self.budget, committed=to_usd(self.committed),
            reserved=to_usd(self.reserved), requests=self.requests, lam=self.lam,
            period_start=self.period_start, by_model={m: to_usd(n) for m, n in self.spend.items()},
            calls_by_model=dict(self.calls), released=self.released, expired=self.expired,
            idle_ttl_s=self.idle_ttl_s,
        )


def scope_chain(scope: str) -> tuple[str, ...]:
    """The scope and every scope enclosing it: "acme/agent-7" → ("acme", "acme/agent-7").

    ValueError for anything but a non-empty path of at most MAX_SCOPE_DEPTH non-empty parts and
    MAX_SCOPE_CHARS characters, free of control characters and encodable as UTF-8 (every store
    keeps it as text): a session id a client supplies must not cost seconds or megabytes.
    """
    if not isinstance(scope, str) or not scope:
        raise ValueError(f"scope must be a non-empty path like 'tenant/agent/session', got {scope!r}")
    if len(scope) > MAX_SCOPE_CHARS:
        raise ValueError(f"scope must be at most {MAX_SCOPE_CHARS} characters, got {len(scope)}")
    parts = scope.split("/")
    if len(parts) > MAX_SCOPE_DEPTH:
        raise ValueError(f"scope must be at most {MAX_SCOPE_DEPTH} levels deep, got {len(parts)}: {scope[:80]!r}...")
    if any(not part for part in parts):
        raise ValueError(f"scope must be a non-empty path like 'tenant/agent/session', got {scope!r}")
    if not scope.isprintable() or not _encodable(scope):
        raise ValueError(f"scope must be printable UTF-8 text, got {scope!r}")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def check_reservation(scopes: Sequence[str], ttl_s: float) -> tuple[str, ...]:
    """The scopes as a tuple, after checking they are distinct and non-empty and ttl_s is positive."""
    chain = tuple(scopes)
    if not chain or any(not isinstance(s, str) or not s for s in chain) or len(set(chain)) != len(chain):
        raise ValueError(f"a reservation needs distinct, non-empty scope names, got {list(chain)!r}")
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
    return chain


def check_idle_ttl(idle_ttl_s: float | None, name: str = "idle_ttl_s") -> float | None:
    """idle_ttl_s as a float (None stays None), after checking it is a number of seconds in
    [MIN_IDLE_TTL_S, MAX_PERIOD_S]; ValueError naming the parameter (`name`) otherwise."""
    if idle_ttl_s is None:
        return None
    if isinstance(idle_ttl_s, bool) or not isinstance(idle_ttl_s, (int, float)) \
            or not MIN_IDLE_TTL_S <= idle_ttl_s <= MAX_PERIOD_S:
        raise ValueError(
            f"{name} must be None or a number of seconds in [{MIN_IDLE_TTL_S}, {MAX_PERIOD_S:.0f}], got {idle_ttl_s!r}"
        )
    return float(idle_ttl_s)


def check_retention(retention_s: float) -> float:
    """retention_s, after checking it is a positive number of seconds."""
    if not math.isfinite(retention_s) or retention_s <= 0:
        raise ValueError(f"retention_s must be a positive number of seconds, got {retention_s}")
    return float(retention_s)


class LedgerStore(ABC):
    """Where budgets live. Every method is atomic; reserve checks and charges all scopes together.

    A reservation is open until committed, released, or `ttl_s` has passed; then it lapses and
    its money returns to the budget. Committing a lapsed or released reservation still records
    what was spent, once: the ledger remembers every finished id for `retention_s`.
    """

    @abstractmethod
    def set_budget(
        self, scope: str, budget: Budget, *, reset: bool = False, only_if_absent: bool = False,
        idle_ttl_s: float | None = None,
    ) -> bool:
        """Create the scope or change its budget, keeping what it has spent (see the rule below).

        A new scope starts with no spend, its period (when `budget.period_s` is set) starting now.
        For a scope that already has a budget, the rule is, in one atomic step:

        1. The books first roll over under the budget they had: a period that has ended by now
           ends as it would have anyway, and its spend no longer counts.
        2. `reset=True` zeroes the spend of the current period — committed money, request,
           release and lapse counts, spend per model — and starts a new period now.
        3. Otherwise, when the period changes (none → some, some → none, or another length),
           the current period is re-anchored to start now, and what was committed in the period
           that was current stays counted in it: $9.99 spent of $10 stays $9.99 spent when
           `period_s=86400` is added or a day shortened to an hour. Only `reset=True`, or the
           new period's own roll-over (`period_s` after now), zeroes it.
        4. When the period is unchanged, it keeps its start and its spend.

        Money held by open reservations stays held, and λ is kept, whatever is asked.

        `only_if_absent=True` creates the scope only if it has no budget and otherwise changes
        nothing: a default budget set this way never overwrites an explicit one set before it,
        even by another process an instant earlier.

        `idle_ttl_s` (seconds, at least MIN_IDLE_TTL_S) makes the scope forgettable: once no
        reservation, commit, release or budget change has touched it for that long and it holds
        no money, the ledger deletes its books, so scopes made per session do not pile up. A
        forgotten scope is a scope without a budget (its next budget starts with no spend); its
        enclosing scopes keep everything it spent. Commits, releases and lapses of holds that
        named it still go to those enclosing scopes. None (the default) keeps the scope until
        it is deleted; setting a budget replaces the scope's `idle_ttl_s` with the one given.
        Expiry runs inside later ledger operations, at most IDLE_BATCH scopes each.

        Returns True when the budget was set, False when `only_if_absent` found one already.
        ValueError for a malformed scope or `idle_ttl_s`.
        """

    @abstractmethod
    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        """Each scope's books (None for a scope without a budget), read together in one step."""

    def state(self, scope: str) -> ScopeState | None:
        """The scope's books, or None when it has no budget."""
        return self.states([scope])[0]

    @abstractmethod
    def scopes(self) -> list[str]:
        """Every scope that has a budget, sorted."""

    @abstractmethod
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount: float, ttl_s: float) -> None:
        """Hold `amount` in every scope, or raise BudgetExceeded and hold nothing.

        Repeating an open reservation with the same scopes and amount does nothing (a retry
        after a lost reply); reusing its id otherwise raises ValueError.
        """

    @abstractmethod
    def commit(self, reservation_id: str, actual: float, model: str | None = None) -> bool:
        """Turn a reservation into spend of `actual`; False when that id was already committed."""

    @abstractmethod
    def release(self, reservation_id: str) -> bool:
        """Drop a reservation without spending; False when it was not open."""

    @abstractmethod
    def adjust_lambda(self, scope: str, value: float) -> None:
        """Store the scope's dual variable."""

    @abstractmethod
    def open_reservations(self) -> int:
        """How many reservations are open (after expiring stale ones)."""

    @property
    def url(self) -> str:
        """Which ledger this is, as a URL without credentials (open_store's form where it has one).

        Kept commits name their ledger by it (`shared_core.pending`): two stores with one URL are
        one ledger. A store of your own should return something unique to the ledger it reaches."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def report(self, scope: str | None = None) -> list[ScopeState]:
        """The books of `scope` and every scope nested in it (all scopes when None), sorted."""
        if scope is not None:
            scope_chain(scope)
        names = [s for s in self.scopes() if scope is None or s == scope or s.startswith(scope + "/")]
        return [st for st in self.states(names) if st is not None]

    def close(self) -> None:
        """Let go of connections and files (the store must not be used afterwards)."""


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
            raise UnknownScope(f"scope {scope!r} has no budget")
        books.roll(now)
        return books

    def set_budget(
        self, scope: str, budget: Budget, *, reset: bool = False, only_if_absent: bool = False,
        idle_ttl_s: float | None = None,
    ) -> bool:
        scope_chain(scope)
        idle_ttl_s = check_idle_ttl(idle_ttl_s)
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

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount: float, ttl_s: float) -> None:
        nanos = to_nanos(amount, "reservation amount")
        chain = check_reservation(scopes, ttl_s)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            if reservation_id in self._open or reservation_id in self._done:
                hold = self._open.get(reservation_id)
                if hold is not None and (hold.scopes, hold.amount) == (chain, nanos):
                    return
                raise ValueError(f"reservation id {reservation_id!r} is already used")
            books = [self._scope(s, now) for s in chain]
            for b in books:
                b.check(nanos)
            for b in books:
                b.reserved += nanos
            self._touch(books, now)
            self._open[reservation_id] = _Hold(chain, nanos, now + ttl_s)
            heapq.heappush(self._expiry, (now + ttl_s, reservation_id))

    def commit(self, reservation_id: str, actual: float, model: str | None = None) -> bool:
        nanos = to_nanos(actual, "actual cost")
        with self._lock:
            now = self._clock()
            self._sweep(now)
            hold = self._open.get(reservation_id) or self._done.get(reservation_id)
            if hold is None:
                raise UnknownReservation(f"unknown reservation {reservation_id!r} (never made, or forgotten after retention)")
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

    def adjust_lambda(self, scope: str, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"lambda must be finite, got {value}")
        with self._lock:
            self._scope(scope, self._clock()).lam = float(value)

    @property
    def url(self) -> str:
        # A memory ledger is this object in this process: "memory://<pid>/<object id>".
        return f"memory://{os.getpid()}/{id(self):x}"

    def open_reservations(self) -> int:
        with self._lock:
            self._sweep(self._clock())
            return len(self._open)
