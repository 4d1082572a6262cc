"""LangChain messages read into the core's settlement, and the routing record carried on a response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from shared_core.calls import Settlement, settle_usage
from shared_core.metering import (
    METADATA_KEY,
    StreamSettlement,
    ToolCallPart,
    combined_usage,
    routing_record,
    tool_call_text,
)
from shared_core.router import Decision, Router

__all__ = ["SummaryRelay", "add_chunk", "record", "settle"]


def _produced_text(message: BaseMessage) -> str:
    """What a model wrote, as text to count when it reports no usage: content and tool calls."""
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    return "\n".join([message.text, *(tool_call_text(c["name"], c["args"]) for c in calls)])


def record(decision: Decision, session: str | None, settlement: Settlement) -> dict[str, Any]:
    """The routing summary of a settled call: the core's record, with the session and whether
    LangChain's cache answered (never, for a call that was settled)."""
    return routing_record(decision, settlement, session=session, cached=False)


def settle(router: Router, decision: Decision, session: str | None, messages: Sequence[BaseMessage]) -> dict[str, Any]:
    """Commit a finished call's cost from the candidate's usage_metadata (cache and reasoning details
    included; tiktoken counts without it); the routing summary."""
    usages = [m.usage_metadata for m in messages if isinstance(m, AIMessage) and m.usage_metadata]
    text = "\n".join(_produced_text(m) for m in messages)
    return record(decision, session, settle_usage(router, decision, combined_usage(usages), text))


def add_chunk(books: StreamSettlement, message: AIMessageChunk) -> None:
    """Tell the stream's books what one chunk produced: its text, usage and tool-call pieces."""
    pieces = [ToolCallPart(c["index"], c["name"], c["args"]) for c in message.tool_call_chunks]
    books.add(message.text, message.usage_metadata, pieces)


class SummaryRelay:
    """Passes a candidate's chunks on, keeping its final one back to carry the routing summary.

    Streamed metadata is merged chunk by chunk (strings concatenate, unequal floats raise), so the
    summary rides on exactly one chunk: the candidate's own last chunk, or a closing one.
    """

    def __init__(self) -> None:
        self._held: ChatGenerationChunk | None = None
        self._last_content: str | list = ""

    def feed(self, chunk: ChatGenerationChunk) -> list[ChatGenerationChunk]:
        """The chunks to pass on now, given the candidate's next one."""
        ready = [self._held] if self._held is not None else []
        self._held = None
        self._last_content = chunk.message.content
        if chunk.message.chunk_position == "last":
            self._held = chunk
        else:
            ready.append(chunk)
        return ready

    def closing_chunk(self, summary: dict[str, Any]) -> ChatGenerationChunk:
        """The final chunk, carrying the routing summary."""
        if self._held is not None:
            message = self._held.message
            message.response_metadata = {**message.response_metadata, METADATA_KEY: summary}
            return self._held
        empty: str | list = "" if isinstance(self._last_content, str) else []
        return ChatGenerationChunk(message=AIMessageChunk(
            content=empty, response_metadata={METADATA_KEY: summary}, chunk_position="last"
        ))
