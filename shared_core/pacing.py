"""Online dual pacing: the price λ on money that keeps a scope's spend on its budget's track."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .budget import ScopeState

__all__ = ["DualPacer", "PaceUpdate"]

# Most points a warm-start curve keeps: plenty for a step function read at one rate at a time.
_WARM_POINTS = 512
# Below a second of history an arrival rate is a guess: count at least this much elapsed time.
_MIN_ELAPSED_S = 1.0


class DualPacer(BaseModel):
    """Dual descent on the price of money λ, per scope, toward the spend rate that lands on budget.

    Both modes steer by ρ = what is left / requests left, the per-request spend that would land
    exactly on budget, and update the scope's stored θ after each settled request of cost c:

    - Cold (no warm start): θ is λ in units of the budget's even share per request ρ₀ (usd /
      horizon): λ = θ/ρ₀ and θ ← clip(θ + η·(c − ρ)/ρ₀, 0, θ_max) (Balseiro, Lu & Mirrokni's
      dual descent with a Euclidean mirror map).
    - Warm (`warm`, from the batch solver on representative prompts): λ = θ·λ_B(ρ), where λ_B(ρ)
      is the λ the batch solution needs when every request may spend ρ: the pacer re-solves the
      rest of the horizon at each request. θ starts at 1 and corrects the curve's bias by
      multiplicative dual descent, θ ← θ·exp(η_w·(c − ρ)/ρ₀) (an entropic mirror map).

    A budget paced over seconds (`Budget.horizon_s`, e.g. $20 a day) has no request count: the
    pacer projects one from the arrival rate seen so far in the period, (requests + 1) ×
    horizon_s / elapsed. A request horizon, when given, takes precedence.
    """

    # Every parameter finite: an infinite max_theta (or step) let θ reach ∞, which a ledger cannot store.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    step: float = Field(0.05, gt=0, description="η: how far one request's overspend moves a cold θ.")
    warm_step: float = Field(
        0.001, ge=0, description="η_w: how far one request's overspend moves a warm θ (log units); see docs."
    )
    initial: float = Field(1.0, ge=0, description="A cold θ before any request.")
    max_theta: float = Field(1e4, gt=0, description="Upper clip of θ.")
    warm_rates: tuple[float, ...] = Field(
        (), description="Per-request spend rates (USD, ascending) of the batch solution on representative prompts."
    )
    warm_lambdas: tuple[float, ...] = Field((), description="The batch solution's λ at each warm rate.")
    clock: Callable[[], float] = Field(
        time.time, exclude=True, description="Seconds since the epoch; must match the ledger's clock."
    )

    @model_validator(mode="after")
    def _warm_curve_valid(self) -> DualPacer:
        rates, lams = np.asarray(self.warm_rates, dtype=float), np.asarray(self.warm_lambdas, dtype=float)
        if rates.shape != lams.shape:
            raise ValueError("warm_rates and warm_lambdas must have the same length")
        if not (np.isfinite(rates).all() and np.isfinite(lams).all()) or (rates < 0).any() or (lams < 0).any():
            raise ValueError("warm_rates and warm_lambdas must be finite and >= 0")
        if np.any(np.diff(rates) <= 0):
            raise ValueError("warm_rates must be strictly increasing")
        return self

    @property
    def is_warm(self) -> bool:
        """Whether the pacer prices from a batch curve."""
        return bool(self.warm_rates)

    def warm(self, rates: np.ndarray, lambdas: np.ndarray) -> DualPacer:
        """A copy priced from a batch budget curve: the λ needed at each per-request spend rate.

        `rates`/`lambdas` are `solver.budget_curve` with spend divided by the number of prompts
        (any order); long curves are thinned to a few hundred points.
        """
        rates, lambdas = np.asarray(rates, dtype=float), np.asarray(lambdas, dtype=float)
        if rates.shape != lambdas.shape or rates.ndim != 1 or not rates.size:
            raise ValueError("rates and lambdas must be two non-empty 1-D arrays of one length")
        order = np.argsort(rates, kind="stable")
        keep = order[np.unique(np.linspace(0, len(rates) - 1, min(len(rates), _WARM_POINTS)).astype(int))]
        return self.model_copy(update={
            "warm_rates": tuple(rates[keep].tolist()), "warm_lambdas": tuple(lambdas[keep].tolist()),
        })

    def warm_lambda(self, rate: float) -> float | None:
        """λ_B at a per-request spend rate, or None without a warm start."""
        if not self.warm_rates:
            return None
        # The batch solution at budget rate ρ is priced by the λ of the largest curve rate ≤ ρ;
        # below the whole curve, by its highest λ (the cheapest assignment).
        i = bisect.bisect_right(self.warm_rates, rate) - 1
        return self.warm_lambdas[max(i, 0)]

    def theta(self, state: ScopeState) -> float:
        """The scope's current θ (cold: λ·ρ₀; warm: the factor on the batch curve's λ)."""
        if state.lam is not None:
            return state.lam
        return 1.0 if self.is_warm else self.initial

    def price(self, state: ScopeState) -> float:
        """λ in quality per US dollar for this scope (0 when the budget has no horizon)."""
        pace = self._pace(state)
        if pace is None:
            return 0.0
        share, target = pace
        if self.is_warm:
            return self.theta(state) * self.warm_lambda(target)  # type: ignore[operator]
        return self.theta(state) / share

    def update(self, state: ScopeState, cost: float) -> float | None:
        """θ after a request of `cost` settled against `state` (the books before that request)."""
        pace = self._pace(state)
        if pace is None:
            return None
        share, target = pace
        gradient = (cost - target) / share
        if self.is_warm:
            # No single request moves the price by more than a factor e.
            theta = self.theta(state) * math.exp(max(-1.0, min(1.0, self.warm_step * gradient)))
        else:
            theta = self.theta(state) + self.step * gradient
        return min(self.max_theta, max(0.0, theta)) if math.isfinite(theta) else self.max_theta

    def _pace(self, state: ScopeState) -> tuple[float, float] | None:
        """(even share per request ρ₀, on-budget spend for this request ρ), or None without a horizon."""
        budget = state.budget
        if budget.usd <= 0:
            return None
        if budget.horizon is not None:
            horizon = float(budget.horizon)
        elif budget.horizon_s is not None:
            elapsed = max(_MIN_ELAPSED_S, self.clock() - state.period_start)
            horizon = max(1.0, (state.requests + 1) * budget.horizon_s / elapsed)  # this request has arrived
        else:
            return None
        left = max(0.0, budget.usd - state.committed)
        return budget.usd / horizon, left / max(1.0, horizon - state.requests)


@dataclass(frozen=True)
class PaceUpdate:
    """The dual update one settled request makes: θ = `pacer.update(books before, cost)` for each
    scope in `scopes` (those it charged), None for any other.

    Callable as a ledger's `Pace`. A ledger that commits in a step of its own (the Redis script)
    may instead read these fields and make the same update inside that step, with
    `DualPacer.update`'s arithmetic and its own clock (the ledger's, which the pacer's must match):
    λ then moves with the money, atomically, instead of in a second round trip.
    """

    pacer: DualPacer
    cost: float  # USD
    scopes: frozenset[str]

    def __call__(self, state: ScopeState) -> float | None:
        return self.pacer.update(state, self.cost) if state.scope in self.scopes else None
