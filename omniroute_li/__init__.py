"""OmniRoute for LlamaIndex: a routed LLM (`OmniRouteLLM`), a budget-aware selector and a spend tracker."""

from shared_core.errors import BudgetExceeded, OmniRouteError

from .embeddings import LlamaIndexEmbedder
from .llm import OmniRouteLLM
from .selector import OmniRouteSelector, RoutedSelection
from .sharing import LedgerNotShared
from .spend import CandidateFailedEvent, RoutedCallEndEvent, SpendTracker

__all__ = [
    "BudgetExceeded",
    "CandidateFailedEvent",
    "LedgerNotShared",
    "LlamaIndexEmbedder",
    "OmniRouteError",
    "OmniRouteLLM",
    "OmniRouteSelector",
    "RoutedCallEndEvent",
    "RoutedSelection",
    "SpendTracker",
]
