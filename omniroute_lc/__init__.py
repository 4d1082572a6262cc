"""LangChain adapter: ChatOmniRoute, a chat model that routes every call under a budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared_core.errors import BudgetExceeded, OmniRouteError

from .callbacks import SpendTracker
from .chat_model import ChatOmniRoute
from .embeddings import LangChainEmbedder

if TYPE_CHECKING:
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
    # The agent middleware needs the `langchain` package; the rest of the adapter only langchain-core,
    # so it is imported when first asked for.
    if name == "OmniRouteMiddleware":
        from .middleware import OmniRouteMiddleware

        return OmniRouteMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
