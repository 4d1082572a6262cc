"""Budgets and the books a ledger keeps of them: reserve → commit | release, per nested scope.

Every store keeps money as whole nano-dollars (10⁻⁹ USD). Integers make sums exact — a
million commits add up to the cent, in any order, in Python, SQLite and Redis alike — and a
nano-dollar is below the cost of a handful of tokens of any priced model, where micro-dollars
are not (100 tokens of a $0.10-per-million model cost $0.00001). One amount may be at most
MAX_USD = 2⁵¹ nano-dollars (≈ $2.25 million): below it a dollar float converts back to its exact
nano-dollar count, and Redis scripts, which count in doubles, stay exact with room to spare.

This module holds what a ledger keeps; the stores that keep it are peers in `shared_core.stores`
(LedgerStore and MemoryStore are still importable from here)."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .errors import BudgetExceeded, LedgerUnavailable, UnknownScope

if TYPE_CHECKING:
    from .stores.base import LedgerStore
    from .stores.memory import MemoryStore

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
    "DEFAULT_MAX_FINISHED",
    "check_max_finished",
    "MIN_IDLE_TTL_S",
    "check_idle_ttl",
    "budget_from_json",
    "budget_json",
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
#: How long a finished reservation is remembered, so a repeated commit is recognised (a day), unless
#: DEFAULT_MAX_FINISHED reservations that finished later push it out first (see LedgerStore).
DEFAULT_RETENTION_S = 86_400.0
#: How many finished reservations a ledger remembers at most, the oldest forgotten first: what a
#: ledger keeps is bounded whatever the traffic (29 MB in a memory ledger, 35 MB in Redis; see LedgerStore).
DEFAULT_MAX_FINISHED = 100_000
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
    """A spending limit in US dollars, paced over requests or seconds, optionally reset every period.

    A hard cap: the ledger never lets committed + reserved money exceed `usd` (each call holds
    its worst case before it is made). The horizon only paces spending — the price λ of money
    (OmniRouter's Lagrange multiplier, Mei et al., 2025, arXiv:2502.20576) rises when spend runs
    ahead of `usd` × the share of the horizon used — and is never a limit itself.

    Fields: `usd` ≥ 0 (at most MAX_USD); `horizon` requests in 1..MAX_HORIZON; `horizon_s` and
    `period_s` seconds in [MIN_PERIOD_S, MAX_PERIOD_S]. pydantic's ValidationError names the
    field for a bad value (NaN, ∞, negative, a bool, an unknown field); frozen.
    """

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


# Stores keep a budget as its JSON, and read it with every scope's books: each distinct text is
# parsed (and each Budget written) once, which a frozen Budget makes safe to share.
@functools.lru_cache(maxsize=1024)
def budget_from_json(text: str) -> Budget:
    """The Budget a store kept as `text` (Budget.model_dump_json's); pydantic's ValidationError if malformed."""
    return Budget.model_validate_json(text)


@functools.lru_cache(maxsize=1024)
def budget_json(budget: Budget) -> str:
    """`budget` as the JSON text stores keep (budget_from_json reads it back)."""
    return budget.model_dump_json()


@dataclass
class ScopeState:
    """A snapshot of one scope's books (money in USD; counts and spend are for the current period)."""

    scope: str
    budget: Budget
    committed: float = 0.0
    reserved: float = 0.0
    requests: int = 0
    lam: float | None = None  # the pacer's θ (DualPacer.theta: λ·ρ₀ cold, a factor warm), not λ; None until paced
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
    lam: float | None = None  # the pacer's θ, as in ScopeState
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
    MAX_SCOPE_CHARS characters, free of control characters, of whitespace at either end of a
    part, and encodable as UTF-8 (every store keeps it as text): a session id a client supplies
    must not cost seconds or megabytes.
    """
    if not isinstance(scope, str) or not scope:
        raise ValueError(f"scope must be a non-empty path like 'tenant/agent/session', got {scope!r}")
    # A str subclass may define its own split or equality: it is checked as it is, never cached.
    return _scope_chain(scope) if type(scope) is str else _scope_chain.__wrapped__(scope)


# Every request reads its scope's chain several times; sessions repeat, so the checks run once per name.
@functools.lru_cache(maxsize=4096)
def _scope_chain(scope: str) -> tuple[str, ...]:
    if len(scope) > MAX_SCOPE_CHARS:
        raise ValueError(f"scope must be at most {MAX_SCOPE_CHARS} characters, got {len(scope)}")
    parts = scope.split("/")
    if len(parts) > MAX_SCOPE_DEPTH:
        raise ValueError(f"scope must be at most {MAX_SCOPE_DEPTH} levels deep, got {len(parts)}: {scope[:80]!r}...")
    if any(not part for part in parts):
        raise ValueError(f"scope must be a non-empty path like 'tenant/agent/session', got {scope!r}")
    # "acme " beside "acme" would be a second tenant that prints the same in every report.
    if any(part != part.strip() for part in parts):
        raise ValueError(f"scope parts must not begin or end with whitespace, got {scope!r}")
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
    if isinstance(scopes, (str, bytes)):
        # A lone name would be read character by character, each charged as a scope of its own.
        raise TypeError(f"scopes must be a sequence of scope names, not one name: pass [{scopes!r}]")
    chain = tuple(scopes)
    if not chain or any(not isinstance(s, str) or not s for s in chain) or len(set(chain)) != len(chain):
        raise ValueError(f"a reservation needs distinct, non-empty scope names, got {list(chain)!r}")
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
    return chain


def check_reservation_id(reservation_id: str) -> str:
    """The reservation id, after checking it is a non-empty str that every store can hold: TypeError
    for another type, ValueError for a NUL or a lone surrogate (no UTF-8 form)."""
    if not isinstance(reservation_id, str) or not reservation_id:
        raise TypeError(f"a reservation id must be a non-empty str, got {reservation_id!r}")
    if "\x00" in reservation_id:
        raise ValueError(f"a reservation id cannot contain NUL, got {reservation_id!r}")
    try:
        reservation_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a reservation id must be valid Unicode text, got {reservation_id!r}") from None
    return reservation_id


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
    if isinstance(retention_s, bool) or not isinstance(retention_s, numbers.Real) \
            or not math.isfinite(retention_s) or retention_s <= 0:
        raise ValueError(f"retention_s must be a positive number of seconds, got {retention_s!r}")
    return float(retention_s)


def check_max_finished(max_finished: int) -> int:
    """max_finished, after checking it is a whole number of reservations in 1..2⁵³ (Lua counts in doubles)."""
    if isinstance(max_finished, bool) or not isinstance(max_finished, numbers.Integral) \
            or not 1 <= max_finished <= 2**53:
        raise ValueError(f"max_finished must be a whole number of reservations in 1..2**53, got {max_finished!r}")
    return int(max_finished)


# The stores import this module's types, so their classes are fetched only when asked for here.
_MOVED = {"LedgerStore": "base", "MemoryStore": "memory"}


def __getattr__(name: str) -> Any:
    """LedgerStore and MemoryStore, from the modules in shared_core.stores they moved to."""
    if name in _MOVED:
        from importlib import import_module

        return getattr(import_module(f".stores.{_MOVED[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
