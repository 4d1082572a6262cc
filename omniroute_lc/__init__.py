"""LangChain adapter: ChatOmniRoute, a chat model that routes every call under a budget."""

from .callbacks import SpendTracker
from .chat_model import ChatOmniRoute

__all__ = ["ChatOmniRoute", "SpendTracker"]
