"""OmniRoute's shared routing core: candidates, token costs, predictors, budgets and the router.

The names below are imported on first use (PEP 562): `import shared_core`, or importing one of its
modules (as the adapters do), costs nothing beyond what is used, so loading a saved router pays
neither for dataset loading nor for the ledger stores it does not open.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .budget import Budget, BudgetExceeded, LedgerStore, LedgerUnavailable, MemoryStore, ScopeState, UnknownScope
    from .candidates import Candidate
    from .data import RoutingDataset, load_dataset, load_prices
    from .errors import (
        AllCandidatesFailed,
        AttemptTimeout,
        NotFittedError,
        OmniRouteError,
        PersistError,
        UnknownReservation,
    )
    from .pacing import DualPacer
    from .pricing import Usage
    from .router import Decision, Estimate, NoFeasibleCandidate, Router, RoutingError
    from .solver import Infeasible, Solution, solve
    from .stores import SQLiteStore, open_store
    from .tokens import count_message_tokens, count_tokens, count_tokens_batch

#: Each public name by the module that defines it (relative to this package).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ["Budget", "BudgetExceeded", "LedgerStore", "LedgerUnavailable", "MemoryStore", "ScopeState", "UnknownScope"],
        ".budget",
    ),
    "Candidate": ".candidates",
    **dict.fromkeys(["RoutingDataset", "load_dataset", "load_prices"], ".data"),
    **dict.fromkeys(
        ["AllCandidatesFailed", "AttemptTimeout", "NotFittedError", "OmniRouteError", "PersistError",
         "UnknownReservation"],
        ".errors",
    ),
    "DualPacer": ".pacing",
    "Usage": ".pricing",
    **dict.fromkeys(["Decision", "Estimate", "NoFeasibleCandidate", "Router", "RoutingError"], ".router"),
    **dict.fromkeys(["Infeasible", "Solution", "solve"], ".solver"),
    **dict.fromkeys(["SQLiteStore", "open_store"], ".stores"),
    **dict.fromkeys(["count_message_tokens", "count_tokens", "count_tokens_batch"], ".tokens"),
}

__all__ = [
    "Budget",
    "BudgetExceeded",
    "Candidate",
    "Decision",
    "DualPacer",
    "Estimate",
    "LedgerStore",
    "LedgerUnavailable",
    "MemoryStore",
    "SQLiteStore",
    "open_store",
    "NoFeasibleCandidate",
    "Router",
    "RoutingDataset",
    "RoutingError",
    "ScopeState",
    "UnknownScope",
    "Usage",
    "Infeasible",
    "Solution",
    "solve",
    "count_message_tokens",
    "count_tokens",
    "count_tokens_batch",
    "load_dataset",
    "load_prices",
    "AllCandidatesFailed",
    "AttemptTimeout",
    "NotFittedError",
    "OmniRouteError",
    "PersistError",
    "UnknownReservation",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (AttributeError for any other name)."""
    module = _EXPORTS.get(name)
    if module is None:
        # AttributeError (not ImportError) lets `from shared_core import tokens` fall back to the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
