"""OmniRoute for LlamaIndex: a routed LLM (`OmniRouteLLM`), a budget-aware selector and a spend tracker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared_core.errors import BudgetExceeded, OmniRouteError

from .llm import OmniRouteLLM
from .selector import OmniRouteSelector, RoutedSelection
from .sharing import LedgerNotShared
from .spend import CandidateFailedEvent, RoutedCallEndEvent, SpendTracker

if TYPE_CHECKING:
    from .embeddings import LlamaIndexEmbedder

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


def __getattr__(name: str) -> Any:
    # The embedder needs the core's embedding module, which a router built from candidates never
    # loads: imported when first asked for.
    if name == "LlamaIndexEmbedder":
        from .embeddings import LlamaIndexEmbedder

        return LlamaIndexEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
