"""LlamaIndex objects in and out of the core: requests, tool schemas, usage and routing metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, ToolCallBlock
from llama_index.core.tools import BaseTool

from shared_core.calls import Settlement
from shared_core.router import Decision

__all__ = [
    "METADATA_KEY",
    "annotate",
    "output_text",
    "provider_usage",
    "routed_model",
    "to_request",
    "tool_schemas",
]

#: Where a routed response carries its routing record, in `additional_kwargs`.
METADATA_KEY = "omniroute"

Response = TypeVar("Response", ChatResponse, CompletionResponse)


def _tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    return [
        {"name": b.tool_name, "arguments": b.tool_kwargs} for b in message.blocks if isinstance(b, ToolCallBlock)
    ]


def to_request(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The core's request for chat messages: role, text and any tool calls, which cost tokens too."""
    request = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role.value, "content": message.content or ""}
        calls = _tool_calls(message)
        if calls:
            entry["tool_calls"] = calls
        request.append(entry)
    return request


def tool_schemas(tools: Sequence[BaseTool]) -> list[dict[str, Any]]:
    """OpenAI-style schemas of the tools, which the core counts as prompt tokens."""
    return [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]


def provider_usage(response: ChatResponse | CompletionResponse) -> Any:
    """The token report a candidate's response carries, for `pricing.usage_from_report`; None if none.

    The provider's own `usage` in `raw` (OpenAI and Anthropic shapes, as a dict or SDK object,
    cache and reasoning details included), else the token counts LlamaIndex integrations copy
    into `additional_kwargs` (prompt_tokens / completion_tokens).
    """
    raw = response.raw
    usage = raw.get("usage") if isinstance(raw, Mapping) else getattr(raw, "usage", None)
    if usage is not None:
        return usage
    counts = {k: v for k, v in response.additional_kwargs.items() if k in ("prompt_tokens", "completion_tokens")}
    return counts or None


def output_text(response: ChatResponse | CompletionResponse) -> str:
    """What the model produced, tool calls included: counted when the provider reports no usage."""
    if isinstance(response, CompletionResponse):
        return response.text
    calls = _tool_calls(response.message)
    text = response.message.content or ""
    return text + (json.dumps(calls, separators=(",", ":"), default=str) if calls else "")


def _with_usage(raw: Any, settlement: Settlement) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": settlement.input_tokens,
        "completion_tokens": settlement.output_tokens,
        "total_tokens": settlement.input_tokens + settlement.output_tokens,
    }
    if settlement.usage_source != "provider":
        usage["usage_source"] = settlement.usage_source  # these are OmniRoute's counts, not the bill
    if raw is None:
        return {"usage": usage}
    if isinstance(raw, Mapping):
        reported = raw.get("usage")
        merged = {**reported, **usage} if isinstance(reported, Mapping) else usage
        return {**raw, "usage": merged}
    # A provider's own response object is kept whole beside the usage.
    return {"usage": usage, "response": raw}


def annotate(
    response: Response, decision: Decision, settlement: Settlement | None = None, *, final_chunk: bool = False
) -> Response:
    """A copy of a candidate's response carrying the routing record (and, once settled, the costs).

    With a settlement, exact usage goes to `raw["usage"]` (prompt_tokens, completion_tokens). A
    final stream chunk repeats the answer with an empty delta, so consumers add nothing twice.
    """
    record = decision.to_dict() if settlement is None else {**decision.to_dict(), **settlement.to_dict()}
    update: dict[str, Any] = {"additional_kwargs": {**response.additional_kwargs, METADATA_KEY: record}}
    if settlement is not None:
        update["raw"] = _with_usage(response.raw, settlement)
    if final_chunk:
        update["delta"] = ""
    return response.model_copy(update=update)


def routed_model(response: ChatResponse | CompletionResponse) -> str | None:
    """The candidate that produced a routed response, or None for a response the router did not make."""
    record = response.additional_kwargs.get(METADATA_KEY)
    return record.get("model") if isinstance(record, Mapping) else None
