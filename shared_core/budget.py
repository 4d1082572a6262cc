"""Budgets and the ledger that keeps them: reserve → commit | release, per nested scope."""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "Budget",
    "BudgetExceeded",
    "UnknownScope",
    "ScopeState",
    "LedgerStore",
    "MemoryStore",
    "scope_chain",
]


class BudgetExceeded(RuntimeError):
    """No candidate's worst-case cost fits what is left of every enclosing budget."""

    def __init__(self, message: str, *, scope: str | None = None, remaining: float | None = None):
        super().__init__(message)
        self.scope = scope
        self.remaining = remaining


class UnknownScope(KeyError):
    """A scope was named that has no budget while the router runs in strict mode."""


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
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"budget usd must be a finite number >= 0, got {v}")
        return float(v)

    @field_validator("horizon")
    @classmethod
    def _horizon_valid(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"horizon must be a positive number of requests, got {v}")
        return v

    @field_validator("horizon_s", "period_s")
    @classmethod
    def _period_valid(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise ValueError(f"must be a positive number of seconds, got {v}")
        return v


@dataclass
class ScopeState:
    """A snapshot of one scope's books."""

    scope: str
    budget: Budget
    committed: float = 0.0
    reserved: float = 0.0
    requests: int = 0
    lam: float | None = None
    period_start: float = 0.0
    by_model: dict[str, float] = field(default_factory=dict)

    @property
    def remaining(self) -> float:
        """Money neither spent nor held by an open reservation."""
        return max(0.0, self.budget.usd - self.committed - self.reserved)

    @property
    def remaining_requests(self) -> int | None:
        """Requests left of the horizon (at least 1), or None when the horizon is unknown."""
        if self.budget.horizon is None:
            return None
        return max(1, self.budget.horizon - self.requests)


def scope_chain(scope: str) -> tuple[str, ...]:
    """The scope and every scope enclosing it: "acme/agent-7" → ("acme", "acme/agent-7")."""
    if not isinstance(scope, str) or not scope or any(not part for part in scope.split("/")):
        raise ValueError(f"scope must be a non-empty path like 'tenant/agent/session', got {scope!r}")
    parts = scope.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


class LedgerStore(ABC):
    """Where budgets live. Every method is atomic; reserve checks and charges all scopes together."""

    @abstractmethod
    def set_budget(self, scope: str, budget: Budget) -> None:
        """Create the scope or change its budget, keeping what it has spent."""

    @abstractmethod
    def state(self, scope: str) -> ScopeState | None:
        """The scope's books, or None when it has no budget."""

    @abstractmethod
    def reserve(self, reservation_id: str, scopes: Sequence[str], amount: float, ttl_s: float) -> None:
        """Hold `amount` in every scope, or raise BudgetExceeded and hold nothing."""

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


@dataclass
class _Hold:
    scopes: tuple[str, ...]
    amount: float
    expires_at: float


class MemoryStore(LedgerStore):
    """A thread-safe ledger in this process's memory (the default; gone when the process ends)."""

    def __init__(self, clock: callable = time.time) -> None:  # type: ignore[valid-type]
        self._lock = threading.Lock()
        self._scopes: dict[str, ScopeState] = {}
        self._holds: dict[str, _Hold] = {}
        self._lapsed: dict[str, _Hold] = {}
        self._spent: dict[str, tuple[tuple[str, ...], float]] = {}
        self._clock = clock

    def _roll_period(self, st: ScopeState, now: float) -> None:
        period = st.budget.period_s
        if period and now - st.period_start >= period:
            st.period_start += period * math.floor((now - st.period_start) / period)
            st.committed, st.requests, st.by_model = 0.0, 0, {}

    def _expire(self, now: float) -> None:
        # An expired hold returns its money; a late commit for it still charges what was spent.
        for rid in [rid for rid, h in self._holds.items() if h.expires_at <= now]:
            self._lapsed[rid] = self._drop(rid)  # type: ignore[assignment]

    def _drop(self, rid: str) -> _Hold | None:
        hold = self._holds.pop(rid, None)
        if hold is not None:
            for s in hold.scopes:
                st = self._scopes.get(s)
                if st is not None:
                    st.reserved = max(0.0, st.reserved - hold.amount)
        return hold

    def set_budget(self, scope: str, budget: Budget) -> None:
        with self._lock:
            st = self._scopes.get(scope)
            if st is None:
                self._scopes[scope] = ScopeState(scope=scope, budget=budget, period_start=self._clock())
            else:
                st.budget = budget

    def state(self, scope: str) -> ScopeState | None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            st = self._scopes.get(scope)
            if st is None:
                return None
            self._roll_period(st, now)
            return ScopeState(
                scope=st.scope, budget=st.budget, committed=st.committed, reserved=st.reserved,
                requests=st.requests, lam=st.lam, period_start=st.period_start, by_model=dict(st.by_model),
            )

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount: float, ttl_s: float) -> None:
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"reservation amount must be finite and >= 0, got {amount}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            if reservation_id in self._holds or reservation_id in self._spent or reservation_id in self._lapsed:
                raise ValueError(f"reservation id {reservation_id!r} is already used")
            for s in scopes:
                st = self._scopes[s]
                self._roll_period(st, now)
                if amount > st.remaining + 1e-15:
                    raise BudgetExceeded(
                        f"scope {s!r}: {amount:.6g} USD does not fit the {st.remaining:.6g} USD left",
                        scope=s, remaining=st.remaining,
                    )
            for s in scopes:
                self._scopes[s].reserved += amount
            self._holds[reservation_id] = _Hold(tuple(scopes), amount, now + ttl_s)

    def commit(self, reservation_id: str, actual: float, model: str | None = None) -> bool:
        if not math.isfinite(actual) or actual < 0:
            raise ValueError(f"actual cost must be finite and >= 0, got {actual}")
        with self._lock:
            if reservation_id in self._spent:
                return False
            hold = self._drop(reservation_id) or self._lapsed.pop(reservation_id, None)
            if hold is None:
                raise KeyError(f"unknown reservation {reservation_id!r}")
            now = self._clock()
            for s in hold.scopes:
                st = self._scopes[s]
                self._roll_period(st, now)
                st.committed += actual
                st.requests += 1
                if model is not None:
                    st.by_model[model] = st.by_model.get(model, 0.0) + actual
            self._spent[reservation_id] = (hold.scopes, actual)
            return True

    def release(self, reservation_id: str) -> bool:
        with self._lock:
            return self._drop(reservation_id) is not None

    def adjust_lambda(self, scope: str, value: float) -> None:
        with self._lock:
            self._scopes[scope].lam = value

    def open_reservations(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._holds)
