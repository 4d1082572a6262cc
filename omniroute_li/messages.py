"""LlamaIndex objects in and out of the core: requests, tool schemas, usage and routing metadata."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    DocumentBlock,
    ImageBlock,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.tools import BaseTool

from shared_core.calls import Settlement
from shared_core.metering import METADATA_KEY, routing_record
from shared_core.router import Decision

__all__ = [
    "annotate",
    "chat_messages",
    "output_text",
    "prompt_text",
    "provider_usage",
    "routed_model",
    "to_request",
    "tool_schemas",
]

Response = TypeVar("Response", ChatResponse, CompletionResponse)


def _tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    return [
        {"name": b.tool_name, "arguments": b.tool_kwargs, "id": b.tool_call_id}
        for b in message.blocks if isinstance(b, ToolCallBlock)
    ]


def _content_block(block: Any) -> dict[str, Any] | None:
    """A LlamaIndex content block in the OpenAI shape the core counts (None: not input content)."""
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        if block.image:  # kept base64-encoded by LlamaIndex
            mime = block.image_mimetype or "image/png"
            url = f"data:{mime};base64,{block.image.decode('ascii', 'replace')}"
        else:  # a URL or a file: its size is not read here, so the documented upper bound counts
            url = str(block.url or block.path or "")
        return {"type": "image_url", "image_url": {"url": url, "detail": block.detail or "auto"}}
    if isinstance(block, AudioBlock):
        return {"type": "input_audio", "input_audio": {"data": (block.audio or b"").decode("ascii", "replace")}}
    if isinstance(block, DocumentBlock):
        return {"type": "file", "file": {"file_data": (block.data or b"").decode("ascii", "replace")}}
    return None


def _content(message: ChatMessage) -> str | list[dict[str, Any]]:
    """Plain text, or content blocks when the message carries images, audio or documents."""
    if all(isinstance(b, (TextBlock, ToolCallBlock)) for b in message.blocks):
        return message.content or ""
    return [c for c in map(_content_block, message.blocks) if c is not None]


def chat_messages(messages: Any, method: str | None = None, *, name: str = "messages") -> list[ChatMessage]:
    """`messages` (any iterable, read once) as a list, after checking it holds ChatMessages:
    TypeError naming the call (`method`, else the argument `name`) and the first item that is not
    one, before any routing or ledger work. Unchecked, a prompt string was read letter by letter
    deep in the call ("'str' object has no attribute 'role'"), and a generator read empty."""
    what = f"{method}() takes" if method else f"{name} must be"
    if isinstance(messages, ChatMessage):
        got = "one ChatMessage: put it in a list"
    elif isinstance(messages, str):
        got = f"str; use {method.replace('chat', 'complete')}() for a prompt string" if method else "str"
    elif not isinstance(messages, Iterable) or isinstance(messages, (bytes, bytearray, Mapping)):
        got = type(messages).__name__
    else:
        checked = list(messages)
        for i, message in enumerate(checked):
            if not isinstance(message, ChatMessage):
                where = f"{method}() {name}" if method else name
                raise TypeError(f"{where}[{i}] must be a ChatMessage, got {type(message).__name__}")
        return checked
    raise TypeError(f"{what} a sequence of ChatMessage, got {got}")


def prompt_text(prompt: Any, method: str) -> str:
    """The prompt of a completion call, after checking it is a str: TypeError naming the call
    otherwise, before any routing or ledger work (None was routed and charged as an empty prompt)."""
    if not isinstance(prompt, str):
        messages = isinstance(prompt, ChatMessage) or (
            isinstance(prompt, Sequence) and any(isinstance(m, ChatMessage) for m in prompt)
        )
        hint = f"; use {method.replace('complete', 'chat')}() for a sequence of ChatMessage" if messages else ""
        raise TypeError(f"{method}() takes a prompt string, got {type(prompt).__name__}{hint}")
    return prompt


def to_request(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The core's request for chat messages: role, content (images and other media included) and
    any tool calls, all of which cost tokens."""
    request = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role.value, "content": _content(message)}
        calls = _tool_calls(message)
        if calls:
            entry["tool_calls"] = calls
        if message.additional_kwargs.get("tool_call_id"):  # a tool's result names the call it answers
            entry["tool_call_id"] = message.additional_kwargs["tool_call_id"]
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


def _usage_counts(settlement: Settlement) -> dict[str, int]:
    return {
        "prompt_tokens": settlement.input_tokens,
        "completion_tokens": settlement.output_tokens,
        "total_tokens": settlement.input_tokens + settlement.output_tokens,
    }


def _with_usage(raw: Any, settlement: Settlement) -> Any:
    """`raw` with the settled usage: merged into a dict's `usage`, a dict of its own for None; a
    provider's own response object (an openai ChatCompletion, ...) is kept as it is."""
    if raw is not None and not isinstance(raw, Mapping):
        return raw
    usage: dict[str, Any] = _usage_counts(settlement)
    if settlement.usage_source != "provider":
        usage["usage_source"] = settlement.usage_source  # these are OmniRoute's counts, not the bill
    if raw is None:
        return {"usage": usage}
    reported = raw.get("usage")
    merged = {**reported, **usage} if isinstance(reported, Mapping) else usage
    return {**raw, "usage": merged}


def annotate(
    response: Response, decision: Decision, settlement: Settlement | None = None, *, final_chunk: bool = False
) -> Response:
    """A copy of a candidate's response carrying the routing record (and, once settled, the costs).

    With a settlement, the exact usage charged goes to `additional_kwargs` (prompt_tokens,
    completion_tokens, total_tokens: where LlamaIndex integrations put it and where
    `TokenCountingHandler` looks when `raw` reports none) and the record; `raw` stays the
    provider's own response object, or, when it was a dict or nothing, gets `raw["usage"]`. A
    final stream chunk repeats the answer with an empty delta, so consumers add nothing twice.
    """
    extra = {**response.additional_kwargs, METADATA_KEY: routing_record(decision, settlement)}
    update: dict[str, Any] = {"additional_kwargs": extra}
    if settlement is not None:
        extra.update(_usage_counts(settlement))
        update["raw"] = _with_usage(response.raw, settlement)
    if final_chunk:
        update["delta"] = ""
    return response.model_copy(update=update)


def routed_model(response: ChatResponse | CompletionResponse) -> str | None:
    """The candidate that produced a routed response, or None for a response the router did not make."""
    record = response.additional_kwargs.get(METADATA_KEY)
    return record.get("model") if isinstance(record, Mapping) else None
