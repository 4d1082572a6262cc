"""OmniRoute for LlamaIndex: a routed LLM (`OmniRouteLLM`) and a budget-aware selector."""

from .llm import OmniRouteLLM
from .selector import OmniRouteSelector, RoutedSelection

__all__ = ["OmniRouteLLM", "OmniRouteSelector", "RoutedSelection"]
