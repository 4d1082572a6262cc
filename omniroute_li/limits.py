"""A LlamaIndex LLM's own limits and tool support, and how one call is capped and asked for its stream usage."""

from __future__ import annotations

from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW, DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM

from shared_core.candidates import Candidate
from shared_core.catalogue import Declared

__all__ = [
    "can_call_tools", "capped", "declared", "declared_limits", "provider_of", "stream_usage_kwargs",
    "with_declared_limits",
]


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _declared(llm: LLM, name: str, value: Any, placeholder: int) -> int | None:
    # LlamaIndex fills metadata it was not given with generic placeholders (a 3,900-token window,
    # 256 output tokens); those describe no model, so they count only when set on purpose.
    value = _positive_int(value)
    if value == placeholder and name not in llm.model_fields_set:
        return None
    return value


def declared_limits(llm: LLM) -> tuple[int | None, int | None, int | None]:
    """(context window, client cap, output limit) the LLM declares: `metadata.context_window`, its
    client's `max_tokens`, `metadata.num_output`; None = not declared (LlamaIndex's generic defaults
    of 3,900 and 256 tokens count only when set explicitly)."""
    metadata = llm.metadata
    cap = _positive_int(getattr(llm, "max_tokens", None))
    limit = _declared(llm, "num_output", metadata.num_output, DEFAULT_NUM_OUTPUTS)
    return _declared(llm, "context_window", metadata.context_window, DEFAULT_CONTEXT_WINDOW), cap, limit


def provider_of(llm: LLM) -> str | None:
    """The API the LLM's client speaks, from its integration package (llama_index.llms.<name>)."""
    for cls in type(llm).__mro__:
        for provider in ("anthropic", "openai"):
            if cls.__module__.startswith(f"llama_index.llms.{provider}."):
                return provider
    return None


def can_call_tools(llm: LLM) -> bool:
    """Whether the LLM calls tools: a FunctionCallingLLM whose `metadata.is_function_calling_model` says so."""
    return isinstance(llm, FunctionCallingLLM) and bool(llm.metadata.is_function_calling_model)


def _integration(llm: LLM) -> str | None:
    """The integration package the LLM comes from ("openai", "anthropic", "openai_like"; llama_index.llms.<name>)."""
    for cls in type(llm).__mro__:
        parts = cls.__module__.split(".")
        if parts[:2] == ["llama_index", "llms"] and len(parts) > 2:
            return parts[2]
    return None


def declared(llm: LLM) -> Declared:
    """What the LLM says about itself, for Candidate.from_model; TypeError if it is not a LlamaIndex LLM.

    Structured output is left undeclared: LlamaIndex serves it from any LLM (a function-calling
    program where the LLM calls tools, else a text-completion program that parses its answer).
    """
    if not isinstance(llm, LLM):
        raise TypeError(f"expected a LlamaIndex LLM, got {type(llm).__name__}")
    window, cap, limit = declared_limits(llm)
    # The client's endpoint (OpenAI's api_base, Anthropic's base_url) tells the catalogue who serves it.
    url = next((value for value in (getattr(llm, "api_base", None), getattr(llm, "base_url", None))
                if isinstance(value, str) and value), None)
    name = llm.metadata.model_name
    return Declared(
        name=name if isinstance(name, str) and name else None, provider_ref=_integration(llm), api_url=url,
        provider=provider_of(llm), context_window=window, max_output_tokens=limit, client_cap=cap,
        supports_tools=can_call_tools(llm),
    )


def with_declared_limits(candidate: Candidate) -> Candidate:
    """The candidate with the limits, provider and tool support its LLM declares (see Candidate.with_limits
    and Candidate.with_capabilities: a supports_tools it states itself stays)."""
    window, cap, limit = declared_limits(candidate.model)
    # What an earlier client said goes first: this one's limits replace it (its user's stated ones stay).
    limited = candidate.unbound().with_limits(
        context_window=window, max_output_tokens=limit, provider=provider_of(candidate.model), client_cap=cap
    )
    if "max_tokens" not in type(candidate.model).model_fields and limited.accepts_output_cap:
        limited = limited.derived(accepts_output_cap=False)  # see capped()
    return limited.with_capabilities(supports_tools=can_call_tools(candidate.model))


def capped(llm: LLM, cap: int | None, callback_manager: CallbackManager | None = None) -> tuple[LLM, dict[str, Any]]:
    """The LLM one call uses and the keywords that cap its output at `cap` tokens.

    LlamaIndex's OpenAI-family clients put their own `max_tokens` over a call's keyword, so a
    lower cap than the client's goes through a per-call copy that carries it. An LLM without a
    `max_tokens` setting cannot be capped per call: its declared output limit is the worst case.
    `callback_manager` is the manager whose handlers must hear this call: LlamaIndex's
    `llm_chat_callback` / `llm_completion_callback` emit to `self.callback_manager`, so the
    per-call copy carries it and the shared LLM's own manager is never touched. One copy at most.
    """
    update: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if cap is not None and "max_tokens" in type(llm).model_fields:
        own = getattr(llm, "max_tokens", None)
        if own is not None and own > cap:
            update["max_tokens"] = cap
        else:
            extra["max_tokens"] = cap
    if callback_manager is not None and llm.callback_manager is not callback_manager:
        update["callback_manager"] = callback_manager
    return (_call_view(llm, update) if update else llm), extra


def _call_view(llm: LLM, update: dict[str, Any]) -> LLM:
    """A shallow copy of `llm` with `update` applied to its settings, for one call.

    The copy shares the original's private runtime state (its HTTP clients and other lazily
    built objects, `__pydantic_private__`), so a call through a copy reuses the connection pool
    the candidate keeps instead of building a client (tens of milliseconds) it would throw away.
    """
    view = llm.model_copy(update=update)
    private = getattr(llm, "__pydantic_private__", None)
    if private is not None:
        object.__setattr__(view, "__pydantic_private__", private)
    return view


def stream_usage_kwargs(llm: LLM) -> dict[str, Any]:
    """Keywords that make a streaming call report the provider's usage, where the client supports it.

    OpenAI-compatible APIs send a stream's usage only when asked (`stream_options.include_usage`),
    and LlamaIndex's OpenAI clients (OpenAI, OpenAILike, AzureOpenAI) pass call keywords through.
    """
    if any(cls.__module__.startswith("llama_index.llms.openai.") for cls in type(llm).__mro__):
        return {"stream_options": {"include_usage": True}}
    return {}
