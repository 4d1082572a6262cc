"""LangChain adapter: ChatOmniRoute, a chat model that routes every call under a budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared_core.errors import BudgetExceeded, OmniRouteError

from .callbacks import SpendTracker
from .chat_model import ChatOmniRoute

if TYPE_CHECKING:
    from .embeddings import LangChainEmbedder
    from .middleware import OmniRouteMiddleware

__all__ = [
    "BudgetExceeded",
    "LangChainEmbedder",
    "ChatOmniRoute",
    "OmniRouteError",
    "OmniRouteMiddleware",
    "SpendTracker",
]


def __getattr__(name: str) -> Any:
    # Imported when first asked for: the agent middleware needs the `langchain` package (the rest of
    # the adapter only langchain-core), and the embedder the core's embedding module, which a router
    # built from candidates never loads.
    if name == "OmniRouteMiddleware":
        from .middleware import OmniRouteMiddleware

        return OmniRouteMiddleware
    if name == "LangChainEmbedder":
        from .embeddings import LangChainEmbedder

        return LangChainEmbedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
