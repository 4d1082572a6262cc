"""A LlamaIndex LLM's own limits, and how one call is capped and asked for its stream usage."""

from __future__ import annotations

from typing import Any

from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW, DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.llm import LLM

from shared_core.candidates import Candidate

__all__ = ["capped", "declared_limits", "provider_of", "stream_usage_kwargs", "with_declared_limits"]


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _declared(llm: LLM, name: str, value: Any, placeholder: int) -> int | None:
    # LlamaIndex fills metadata it was not given with generic placeholders (a 3,900-token window,
    # 256 output tokens); those describe no model, so they count only when set on purpose.
    value = _positive_int(value)
    if value == placeholder and name not in llm.model_fields_set:
        return None
    return value


def declared_limits(llm: LLM) -> tuple[int | None, int | None]:
    """(context window, output limit) the LLM declares: `metadata.context_window`, and its client's
    `max_tokens` else `metadata.num_output`; None = not declared (LlamaIndex's generic defaults of
    3,900 and 256 tokens count only when set explicitly)."""
    metadata = llm.metadata
    cap = _positive_int(getattr(llm, "max_tokens", None)) or _declared(
        llm, "num_output", metadata.num_output, DEFAULT_NUM_OUTPUTS
    )
    return _declared(llm, "context_window", metadata.context_window, DEFAULT_CONTEXT_WINDOW), cap


def provider_of(llm: LLM) -> str | None:
    """The API the LLM's client speaks, from its integration package (llama_index.llms.<name>)."""
    for cls in type(llm).__mro__:
        for provider in ("anthropic", "openai"):
            if cls.__module__.startswith(f"llama_index.llms.{provider}."):
                return provider
    return None


def with_declared_limits(candidate: Candidate) -> Candidate:
    """The candidate with the limits and provider its LLM declares (see Candidate.with_limits)."""
    window, cap = declared_limits(candidate.model)
    return candidate.with_limits(context_window=window, max_output_tokens=cap, provider=provider_of(candidate.model))


def capped(llm: LLM, cap: int | None) -> tuple[LLM, dict[str, Any]]:
    """The LLM to call and the keywords that cap one call's output at `cap` tokens.

    LlamaIndex's OpenAI-family clients put their own `max_tokens` over a call's keyword, so a
    lower cap than the client's goes through a shallow copy that carries it. An LLM without a
    `max_tokens` setting cannot be capped per call: its declared output limit is the worst case.
    """
    if cap is None or "max_tokens" not in type(llm).model_fields:
        return llm, {}
    own = getattr(llm, "max_tokens", None)
    if own is not None and own > cap:
        return llm.model_copy(update={"max_tokens": cap}), {}
    return llm, {"max_tokens": cap}


def stream_usage_kwargs(llm: LLM) -> dict[str, Any]:
    """Keywords that make a streaming call report the provider's usage, where the client supports it.

    OpenAI-compatible APIs send a stream's usage only when asked (`stream_options.include_usage`),
    and LlamaIndex's OpenAI clients (OpenAI, OpenAILike, AzureOpenAI) pass call keywords through.
    """
    if any(cls.__module__.startswith("llama_index.llms.openai.") for cls in type(llm).__mro__):
        return {"stream_options": {"include_usage": True}}
    return {}
