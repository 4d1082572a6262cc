"""LangChain adapter: ChatOmniRoute, a chat model that routes every call under a budget."""

from shared_core.budget import BudgetExceeded

from .callbacks import SpendTracker
from .chat_model import ChatOmniRoute
from .embeddings import LangChainEmbedder

__all__ = ["BudgetExceeded", "LangChainEmbedder", "ChatOmniRoute", "SpendTracker"]
