"""Settling a routed call from what the candidate reported, and the routing summary on the response."""

from __future__ import annotations

import json
from functools import reduce
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import add_ai_message_chunks, add_usage
from langchain_core.outputs import ChatGenerationChunk

from shared_core.calls import settle_interrupted, settle_usage
from shared_core.router import Decision, Router

__all__ = ["METADATA_KEY", "settle", "StreamMeter"]

#: The response_metadata key that carries the routing summary (money lives here, never in
#: usage_metadata, whose values must stay integers).
METADATA_KEY = "omniroute"


def _produced_text(message: BaseMessage) -> str:
    """What a model wrote, as text to count when it reports no usage: content and tool-call arguments."""
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    return "\n".join([message.text, *(c["name"] + json.dumps(c["args"]) for c in calls)])


def settle(
    router: Router, decision: Decision, session: str | None, messages: Sequence[BaseMessage],
    interrupted: BaseException | None = None,
) -> dict[str, Any]:
    """Commit the call's cost from the candidate's usage_metadata (cache and reasoning details
    included; tiktoken counts without it); the routing summary. A stream `interrupted` after its
    first chunk is charged by `calls.settle_interrupted`'s rule."""
    usages = [m.usage_metadata for m in messages if isinstance(m, AIMessage) and m.usage_metadata]
    report = reduce(add_usage, usages) if usages else None
    text = "\n".join(_produced_text(m) for m in messages)
    settlement = (settle_usage(router, decision, report, text) if interrupted is None
                  else settle_interrupted(router, decision, interrupted, report, text))
    return {**decision.to_dict(), **settlement.to_dict(), "session": session, "cached": False}


class StreamMeter:
    """Passes a candidate's chunks on, keeping its final one back to carry the routing summary.

    Streamed metadata is merged chunk by chunk (strings concatenate, unequal floats raise), so the
    summary rides on exactly one chunk: the candidate's own last chunk, or a closing one.
    """

    def __init__(self) -> None:
        self._messages: list[AIMessageChunk] = []
        self._held: ChatGenerationChunk | None = None

    @property
    def started(self) -> bool:
        """Whether the candidate has produced any chunk."""
        return bool(self._messages)

    def feed(self, chunk: ChatGenerationChunk) -> list[ChatGenerationChunk]:
        """The chunks to pass on now, given the candidate's next one."""
        ready = [self._held] if self._held is not None else []
        self._held = None
        self._messages.append(chunk.message)
        if chunk.message.chunk_position == "last":
            self._held = chunk
        else:
            ready.append(chunk)
        return ready

    def message(self) -> AIMessageChunk:
        """Everything streamed so far, merged (usage summed, tool calls parsed)."""
        if not self._messages:
            return AIMessageChunk(content="")
        return add_ai_message_chunks(self._messages[0], *self._messages[1:])

    def closing_chunk(self, summary: dict[str, Any]) -> ChatGenerationChunk:
        """The final chunk, carrying the routing summary."""
        if self._held is not None:
            message = self._held.message
            message.response_metadata = {**message.response_metadata, METADATA_KEY: summary}
            return self._held
        empty: str | list = "" if not self._messages or isinstance(self._messages[-1].content, str) else []
        return ChatGenerationChunk(message=AIMessageChunk(
            content=empty, response_metadata={METADATA_KEY: summary}, chunk_position="last"
        ))
