"""OmniRoute for LlamaIndex: a routed LLM (`OmniRouteLLM`) and a budget-aware selector."""

from .embeddings import LlamaIndexEmbedder
from .llm import OmniRouteLLM
from .selector import OmniRouteSelector, RoutedSelection

__all__ = ["LlamaIndexEmbedder", "OmniRouteLLM", "OmniRouteSelector", "RoutedSelection"]
