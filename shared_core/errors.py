"""Every error OmniRoute raises about routing, budgets, ledgers and saved routers, under one
base, `OmniRouteError`.

Each also keeps the built-in base it had before the base existed (ValueError, RuntimeError,
KeyError, TimeoutError), so code that caught those still does. The modules that raise them
re-export them under their old names (`shared_core.budget.BudgetExceeded`, ...).

A bad argument to a constructor or a setter — a negative price, a malformed store URL, an
unknown predictor parameter, a scope name where a list is expected — is the programmer's
mistake and raises the built-in ValueError or TypeError (pydantic's ValidationError, a
ValueError, for `Candidate` and `Budget`), naming the argument, as scikit-learn and the
standard library do; a malformed *request* is a `RoutingError`, since requests come from users.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fallbacks import Attempt

__all__ = [
    "AllCandidatesFailed", "AttemptTimeout", "BudgetExceeded", "Infeasible", "LedgerUnavailable",
    "NoFeasibleCandidate", "NotFittedError", "OmniRouteError", "PersistError", "RoutingError", "UnknownReservation",
    "UnknownScope",
]


class OmniRouteError(Exception):
    """The base of every error OmniRoute raises on purpose: catch it to catch them all."""


class _Lookup(KeyError):
    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; a sentence reads better in a traceback.
        return str(self.args[0]) if self.args else ""


class RoutingError(OmniRouteError, ValueError):
    """A request the router cannot route (empty, malformed, or no candidate can serve it)."""


class NoFeasibleCandidate(RoutingError):
    """No candidate can serve the request (context window, tools, structured output, exclusions)."""


class BudgetExceeded(OmniRouteError, RuntimeError):
    """No candidate's worst-case cost fits what is left of every enclosing budget.

    Attributes: `scope`, the scope whose budget is exhausted (an enclosing tenant's, when that is
    the one that refuses); `remaining`, USD left there; and, when the router raised it,
    `worst_case_usd` of the cheapest feasible call, the `model` it would have gone to and the
    `output_tokens` that worst case assumed — lower it with `max_tokens=`.
    """

    def __init__(
        self,
        message: str,
        *,
        scope: str | None = None,
        remaining: float | None = None,
        worst_case_usd: float | None = None,
        output_tokens: int | None = None,
        model: str | None = None,
    ):
        super().__init__(message)
        self.scope = scope
        self.remaining = remaining
        self.worst_case_usd = worst_case_usd
        self.output_tokens = output_tokens
        self.model = model

    @classmethod
    def no_room(cls, scope: str, amount: int, left: int) -> BudgetExceeded:
        """The error for a hold of `amount` nano-dollars that does not fit the `left` of `scope`."""
        from .budget import to_usd

        remaining = to_usd(max(0, left))
        return cls(
            f"scope {scope!r}: {to_usd(amount):.9g} USD does not fit the {remaining:.9g} USD left",
            scope=scope, remaining=remaining,
        )


class UnknownScope(OmniRouteError, _Lookup):
    """A scope was named that has no budget (in strict mode, or in a ledger operation)."""


class UnknownReservation(OmniRouteError, _Lookup):
    """A reservation id the ledger never made, or forgot after its retention."""


class LedgerUnavailable(OmniRouteError, RuntimeError):
    """The ledger's store cannot be reached or stays locked; nothing was reserved or committed."""


class PersistError(OmniRouteError, ValueError):
    """A saved router that cannot be loaded: missing, truncated, tampered with, or another version."""


class Infeasible(OmniRouteError, ValueError):
    """No assignment meets the constraints (budget below the cheapest, target above the best...)."""


class NotFittedError(OmniRouteError, RuntimeError):
    """A predictor or embedder used before `fit`."""


class AttemptTimeout(OmniRouteError, TimeoutError):
    """A candidate did not answer (or start streaming) within the router's per-attempt timeout or deadline."""


class AllCandidatesFailed(OmniRouteError, RuntimeError):
    """Every candidate tried for a request failed; `attempts` holds each one's error, in order.

    The last provider error is also its `__cause__`; `errors` lists them all.
    """

    def __init__(self, attempts: Sequence[Attempt]):
        self.attempts = tuple(attempts)
        tried = "; ".join(f"{a.candidate}: {a.kind} {type(a.error).__name__}: {a.error}" for a in self.attempts)
        charged = self.charged_usd
        billed = f"; {charged:.9g} USD charged for attempts their providers may bill" if charged else ""
        super().__init__(f"all {len(self.attempts)} candidates tried failed ({tried}){billed}")

    @property
    def charged_usd(self) -> float:
        """USD charged for the failed attempts (worst cases of those the providers may bill)."""
        return sum(a.charged_usd for a in self.attempts)

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """The provider errors, one per candidate tried."""
        return tuple(a.error for a in self.attempts)
