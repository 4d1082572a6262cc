"""OmniRoute for LlamaIndex: a routed LLM (`OmniRouteLLM`) and a budget-aware selector."""

from shared_core.budget import BudgetExceeded

from .embeddings import LlamaIndexEmbedder
from .llm import OmniRouteLLM
from .selector import OmniRouteSelector, RoutedSelection

__all__ = ["BudgetExceeded", "LlamaIndexEmbedder", "OmniRouteLLM", "OmniRouteSelector", "RoutedSelection"]
