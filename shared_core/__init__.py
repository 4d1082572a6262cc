"""OmniRoute's shared routing core: candidates, token costs, predictors, budgets and the router."""

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
