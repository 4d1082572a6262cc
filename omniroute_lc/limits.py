"""A LangChain chat model's own limits, and the call keyword that caps its output."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from shared_core.candidates import Candidate

__all__ = ["CAP_FIELDS", "cap_parameter", "declared_limits", "provider_of", "with_declared_limits"]

#: Fields that hold a chat model's output cap, in the order integrations name them: OpenAI and
#: Anthropic `max_tokens`, Google `max_output_tokens`, Ollama `num_predict`, Hugging Face
#: `max_new_tokens`. The same name, passed as a call keyword, caps one call.
CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict", "max_new_tokens")


def cap_parameter(model: BaseChatModel) -> str | None:
    """The call keyword that caps `model`'s output, or None when it has no such setting.

    A model without one cannot be capped per call: the router then reserves its candidate's
    declared `max_output_tokens` as the worst case and relies on the model to keep to it.
    """
    fields = type(model).model_fields
    return next((name for name in CAP_FIELDS if name in fields), None)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def declared_limits(model: BaseChatModel) -> tuple[int | None, int | None]:
    """(context window, output limit) the chat model declares: its client's own output cap, else its
    model profile's `max_output_tokens`; the profile's `max_input_tokens` as the window. None = unknown."""
    name = cap_parameter(model)
    cap = _positive_int(getattr(model, name, None)) if name else None
    profile = getattr(model, "profile", None)
    profile = profile if isinstance(profile, dict) else {}
    window = _positive_int(profile.get("max_input_tokens"))
    return window, cap if cap is not None else _positive_int(profile.get("max_output_tokens"))


def provider_of(model: BaseChatModel) -> str | None:
    """The API the chat model speaks, from its tracing parameters ("openai", "anthropic", ...)."""
    try:
        provider = model._get_ls_params().get("ls_provider")
    except Exception:  # a model whose tracing parameters cannot be built says nothing about it
        return None
    if not isinstance(provider, str):
        return None
    return "openai" if provider.startswith("azure") else provider


def with_declared_limits(candidate: Candidate, model: BaseChatModel) -> Candidate:
    """The candidate with the limits and provider its chat model declares (see Candidate.with_limits)."""
    window, cap = declared_limits(model)
    return candidate.with_limits(context_window=window, max_output_tokens=cap, provider=provider_of(model))
