"""One LangChain call as the routing core sees it, and the kwargs each candidate is called with."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from shared_core.candidates import Candidate
from shared_core.router import Decision

from .events import REPORTER_KWARG
from .limits import CAP_FIELDS, can_call_tools, cap_parameter
from .structured import StructuredOutput, binding_kwargs

__all__ = ["ROUTED_KWARG", "RoutedCall", "core_messages", "can_call_tools"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function"}

# Kwargs the router consumes; every other call kwarg goes to the chosen candidate unchanged. An
# output cap under any integration's name is the call's max_tokens: the router sends it on in
# the chosen candidate's own keyword.
#: The hook keyword that carries a call routed before its run started (RoutedCall, Decision).
ROUTED_KWARG = "omniroute_routed"

_ROUTING_KEYS = (
    "session", "model", "tools", "tool_choice", "tool_options", "structured_output", REPORTER_KWARG, ROUTED_KWARG,
    *CAP_FIELDS,
)


def core_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the core's {"role", "content", "name", "tool_calls"} dicts; TypeError
    naming the first item that is not a BaseMessage (LangChain converts a call's input before its
    hooks see it, but `get_num_tokens_from_messages` takes messages as they come)."""
    if isinstance(messages, str) or not isinstance(messages, Iterable):
        got = "a single str" if isinstance(messages, str) else type(messages).__name__
        raise TypeError(f"expected a sequence of LangChain messages, got {got}")
    converted = []
    for i, m in enumerate(messages):
        if not isinstance(m, BaseMessage):
            raise TypeError(f"messages[{i}] must be a LangChain BaseMessage, got {type(m).__name__}")
        entry: dict[str, Any] = {"role": _ROLES.get(m.type, m.type), "content": m.content}
        if m.name:
            entry["name"] = m.name
        if isinstance(m, AIMessage) and m.tool_calls:
            entry["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c.get("id")} for c in m.tool_calls]
        if isinstance(m, ToolMessage):
            entry["tool_call_id"] = m.tool_call_id
        converted.append(entry)
    return converted


@dataclass(frozen=True)
class RoutedCall:
    """A call's messages, routing options and pass-through kwargs."""

    messages: list[dict[str, Any]]
    stop: list[str] | None
    session: str | None
    model: str | None
    max_tokens: int | None
    tools: tuple[Any, ...]
    tool_choice: Any
    tool_options: Mapping[str, Any]
    structured: StructuredOutput | None
    passthrough: Mapping[str, Any]

    @classmethod
    def from_call(
        cls, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any], *, session: str | None,
        max_tokens: int | None,
    ) -> RoutedCall:
        """Split a hook's kwargs into routing options and kwargs for the candidate."""
        options = {k: kwargs[k] for k in _ROUTING_KEYS if k in kwargs}
        caps = [options[k] for k in CAP_FIELDS if options.get(k) is not None]
        return cls(
            messages=core_messages(messages),
            stop=stop,
            session=session,
            model=options.get("model"),
            max_tokens=min(caps) if caps else max_tokens,
            tools=tuple(options.get("tools") or ()),
            tool_choice=options.get("tool_choice"),
            tool_options=options.get("tool_options") or {},
            structured=options.get("structured_output"),
            passthrough={k: v for k, v in kwargs.items() if k not in _ROUTING_KEYS},
        )

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The bound tools as OpenAI-format schemas, for counting their prompt tokens."""
        return [convert_to_openai_tool(t) for t in self.tools]

    def unsupported(self, models: Mapping[str, BaseChatModel]) -> list[str]:
        """Candidates whose chat model cannot bind this call's tools or apply its structured-output method."""
        native = self.structured is not None and self.structured.native
        return [
            name for name, model in models.items()
            if (self.tools and not can_call_tools(model))
            or (native and self.structured.support(name, model) is None)
        ]

    def candidate_kwargs(
        self, candidate: Candidate, model: BaseChatModel, decision: Decision, *, streaming: bool = False
    ) -> dict[str, Any]:
        """The kwargs the candidate's hook gets: pass-through, the output cap the ledger reserved (in
        the keyword its integration reads), stream usage, its own tool / schema bindings."""
        kwargs = dict(self.passthrough)
        cap, name = decision.output_caps.get(candidate.name), cap_parameter(model)
        if cap is not None and name is not None:
            # The cap reserved is the cap sent: the candidate cannot write more than was held for it.
            kwargs[name] = cap
        if streaming and "stream_usage" in type(model).model_fields:
            # Ask the provider for the stream's usage, so its own figures are committed.
            kwargs["stream_usage"] = True
        native = self.structured.support(candidate.name, model)[0] if self.structured and self.structured.native else {}
        if self.tools:
            options = dict(self.tool_options)
            accepted = inspect.signature(type(model).bind_tools).parameters
            if "strict" in options and "strict" not in accepted:
                del options["strict"]  # strict schemas only where the candidate's integration offers them
            if "response_format" in native and "response_format" in accepted:
                # An integration that takes both (OpenAI's) formats its tools to go with the response
                # format: its SDK refuses non-strict tools beside a JSON schema.
                options["response_format"] = self.structured.schema
            kwargs.update(binding_kwargs(
                model.bind_tools(list(self.tools), tool_choice=self.tool_choice, **options), model
            ))
        kwargs.update(native)
        # LangChain's public methods strip this tracing-only key before calling a model's hooks.
        kwargs.pop("ls_structured_output_format", None)
        return kwargs
