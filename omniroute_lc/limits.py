"""A LangChain chat model's own limits and capabilities, and the call keyword that caps its output."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel

from shared_core.candidates import Candidate
from shared_core.catalogue import Declared

__all__ = [
    "CAP_FIELDS", "can_call_tools", "cap_parameter", "declared", "declared_capabilities", "declared_limits",
    "provider_of", "with_declared_limits",
]

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


def _profile(model: BaseChatModel) -> dict[str, Any]:
    # langchain-core's model profile (models.dev data the integration ships); {} when it has none.
    profile = getattr(model, "profile", None)
    return profile if isinstance(profile, dict) else {}


def declared_limits(model: BaseChatModel) -> tuple[int | None, int | None, int | None]:
    """(context window, client cap, output limit) the chat model declares: its model profile's
    `max_input_tokens`, its client's own output cap (max_tokens=...), its profile's
    `max_output_tokens`. None = unknown."""
    name = cap_parameter(model)
    cap = _positive_int(getattr(model, name, None)) if name else None
    profile = _profile(model)
    return _positive_int(profile.get("max_input_tokens")), cap, _positive_int(profile.get("max_output_tokens"))


def can_call_tools(model: BaseChatModel) -> bool:
    """Whether the chat model implements bind_tools."""
    return type(model).bind_tools is not BaseChatModel.bind_tools


def declared_capabilities(model: BaseChatModel) -> tuple[bool, bool]:
    """(tools, structured output) the chat model can serve: tools as its profile's `tool_calling` says,
    else whether it implements bind_tools; structured output through a tool call, or natively where its
    profile's `structured_output` (else its own `with_structured_output`) offers it."""
    profile = _profile(model)
    tools = profile.get("tool_calling")
    tools = tools if isinstance(tools, bool) else can_call_tools(model)
    native = profile.get("structured_output")
    if not isinstance(native, bool):
        native = type(model).with_structured_output is not BaseChatModel.with_structured_output
    return tools, tools or native


def _ls_params(model: BaseChatModel) -> dict[str, Any]:
    try:
        return dict(model._get_ls_params())
    except Exception:  # a model whose tracing parameters cannot be built says nothing about itself there
        return {}


def provider_of(model: BaseChatModel) -> str | None:
    """The API the chat model speaks, from its tracing parameters ("openai", "anthropic", ...)."""
    provider = _ls_params(model).get("ls_provider")
    if not isinstance(provider, str):
        return None
    return "openai" if provider.startswith("azure") else provider


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def declared(model: BaseChatModel) -> Declared:
    """What the chat model says about itself, for Candidate.from_model; TypeError if it is not a chat model."""
    if not isinstance(model, BaseChatModel):
        raise TypeError(f"expected a LangChain chat model (BaseChatModel), got {type(model).__name__}")
    params = _ls_params(model)
    names = [params.get("ls_model_name"), *(getattr(model, key, None) for key in ("model_name", "model", "model_id"))]
    identifying = model._identifying_params
    names += [identifying.get(key) for key in ("model_name", "model")]
    # The client's endpoint (ChatOpenAI's base_url, ChatAnthropic's, ...) tells the catalogue who serves it.
    fields = type(model).model_fields
    url = next((getattr(model, name) for name, field in fields.items()
                if "base_url" in (name, field.alias) or name == "api_base"), None)
    window, cap, limit = declared_limits(model)
    tools, structured = declared_capabilities(model)
    return Declared(
        name=next(filter(None, map(_text, names)), None), provider_ref=_text(params.get("ls_provider")),
        api_url=_text(url), provider=provider_of(model), context_window=window, max_output_tokens=limit,
        client_cap=cap, supports_tools=tools, supports_structured_output=structured,
    )


def with_declared_limits(candidate: Candidate, model: BaseChatModel) -> Candidate:
    """The candidate with the limits, provider and capabilities its chat model declares (see
    Candidate.with_limits and Candidate.with_capabilities: capabilities it states itself stay)."""
    window, cap, limit = declared_limits(model)
    tools, structured = declared_capabilities(model)
    # What an earlier client said goes first: this one's limits replace it (its user's stated ones stay).
    limited = candidate.unbound().with_limits(context_window=window, max_output_tokens=limit,
                                              provider=provider_of(model), client_cap=cap)
    if cap_parameter(model) is None and limited.accepts_output_cap:
        limited = limited.derived(accepts_output_cap=False)
    return limited.with_capabilities(supports_tools=tools, supports_structured_output=structured)
