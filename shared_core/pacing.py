"""Online dual pacing: the price λ on money that keeps a scope's spend on its budget's track."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from .budget import ScopeState

__all__ = ["DualPacer"]


class DualPacer(BaseModel):
    """Dual (sub)gradient descent on λ, in units of the budget's per-request share.

    The stored variable θ is unitless: the router scores a candidate as q − θ·c/ρ₀, where ρ₀ is
    the budget's even share per request (usd / horizon). After each settled request of cost c,
    θ ← clip(θ + η·(c − ρ)/ρ₀, 0, θ_max), where ρ = what is left / requests left is the spend
    rate that would land exactly on budget. Spending above that rate raises the price of money,
    below it lowers it (Balseiro, Lu & Mirrokni's dual descent with a Euclidean mirror map).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: float = Field(0.05, gt=0, description="η: how far one request's overspend moves θ.")
    initial: float = Field(1.0, ge=0, description="θ before any request (warm start).")
    max_theta: float = Field(1e4, gt=0, description="Upper clip of θ.")

    def theta(self, state: ScopeState) -> float:
        """The scope's current unitless θ."""
        return self.initial if state.lam is None else state.lam

    def price(self, state: ScopeState) -> float:
        """λ in quality per US dollar for this scope (0 when the budget has no horizon)."""
        share = self._share(state)
        return 0.0 if share is None else self.theta(state) / share

    def update(self, state: ScopeState, cost: float) -> float | None:
        """θ after a request of `cost` settled against `state` (the books before that request)."""
        share = self._share(state)
        if share is None:
            return None
        left = max(0.0, state.budget.usd - state.committed)
        target = left / (state.remaining_requests or 1)
        theta = self.theta(state) + self.step * (cost - target) / share
        return min(self.max_theta, max(0.0, theta)) if math.isfinite(theta) else self.max_theta

    @staticmethod
    def _share(state: ScopeState) -> float | None:
        if state.budget.horizon is None or state.budget.usd <= 0:
            return None
        return state.budget.usd / state.budget.horizon
