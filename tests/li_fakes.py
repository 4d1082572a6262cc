"""LlamaIndex test doubles: a provider that reports exact usage, calls tools and fails on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import Field

from shared_core.candidates import Candidate
from shared_core.defaults import default_candidates

#: Real RouterBench models (prices and prior accuracies from shared_core.defaults).
EXPENSIVE = "gpt-4-1106-preview"
CHEAP = "mistralai/mistral-7b-chat"


class ProviderError(RuntimeError):
    """What a provider raises: rate limit, timeout, server error."""


def candidate(name: str, model: Any, **overrides: Any) -> Candidate:
    """RouterBench's candidate `name` (real prices and prior) answered by `model`."""
    base = next(c for c in default_candidates() if c.name == name)
    return Candidate(**{**base.model_dump(), "model": model, **overrides})


def words(text: str) -> int:
    """The fake's own token count: whitespace words (deliberately unlike tiktoken's count)."""
    return len(text.split())


class UsageLLM(FunctionCallingLLM):
    """A provider double: answers `reply`, reports usage like a real integration, can call tools and fail.

    Every public call emits exactly one LLM callback event (as provider integrations do). Usage:
    prompt tokens = words of the prompt, completion tokens = words of the answer, in raw["usage"]
    (streams report it on their last chunk). `failures` calls raise ProviderError first;
    `fail_after_chunks` breaks every stream after that many chunks. Given tools, it calls the first
    one with `tool_kwargs`; after a tool result it answers `reply` plus the result.
    """

    label: str = "fake"
    reply: str = "a routed answer from the fake model"
    failures: int = 0
    fail_after_chunks: int | None = None
    delay_s: float = 0.0
    tool_kwargs: dict[str, Any] = Field(default_factory=dict)
    calls: int = 0
    usage_log: list[tuple[int, int]] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "UsageLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True, is_function_calling_model=True, model_name=self.label)

    # -- behaviour -----------------------------------------------------------------
    def _begin(self, kwargs: dict[str, Any]) -> None:
        self.calls += 1
        if kwargs.get("prepared_for", self.label) != self.label:
            raise ProviderError(f"{self.label} cannot read tool arguments prepared for {kwargs['prepared_for']}")
        if self.failures:
            self.failures -= 1
            raise ProviderError(f"{self.label}: 429 rate limited")

    def _answer(self, messages: Sequence[ChatMessage], tools: Sequence[Any]) -> ChatMessage:
        results = [m.content for m in messages if m.role == MessageRole.TOOL]
        if results:
            return ChatMessage(role=MessageRole.ASSISTANT, content=f"{self.reply}: {results[-1]}")
        if tools:
            call = ToolCallBlock(tool_call_id=f"call-{self.calls}", tool_name=tools[0].metadata.name,
                                 tool_kwargs=dict(self.tool_kwargs))
            return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.reply)

    def _usage(self, prompt: str, answer: str) -> dict[str, Any]:
        self.usage_log.append((words(prompt), words(answer)))
        return {"usage": {"prompt_tokens": words(prompt), "completion_tokens": words(answer)}}

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        self._begin(kwargs)
        message = self._answer(messages, kwargs.get("tools") or [])
        answer = message.content or " ".join(b.tool_name for b in message.blocks if isinstance(b, ToolCallBlock))
        prompt = " ".join(m.content or "" for m in messages)
        return ChatResponse(message=message, raw=self._usage(prompt, answer))

    def _chat_chunks(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Iterator[ChatResponse]:
        full = self._chat(messages, kwargs)
        pieces = (full.message.content or "").split() or [""]
        text = ""
        for i, piece in enumerate(pieces):
            if self.fail_after_chunks is not None and i == self.fail_after_chunks:
                raise ProviderError(f"{self.label}: connection reset mid-stream")
            text = f"{text} {piece}".strip()
            last = i == len(pieces) - 1
            message = full.message if last else ChatMessage(role=MessageRole.ASSISTANT, content=text)
            yield ChatResponse(message=message, delta=piece if i == 0 else f" {piece}", raw=full.raw if last else None)

    def _completion_chunks(self, prompt: str, kwargs: dict[str, Any]) -> Iterator[CompletionResponse]:
        return (
            CompletionResponse(text=c.message.content or "", delta=c.delta, raw=c.raw)
            for c in self._chat_chunks([ChatMessage(role=MessageRole.USER, content=prompt)], kwargs)
        )

    # -- LlamaIndex interface --------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        await asyncio.sleep(self.delay_s)
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Iterator[ChatResponse]:
        return self._chat_chunks(messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> AsyncIterator[ChatResponse]:
        async def gen() -> AsyncIterator[ChatResponse]:
            await asyncio.sleep(self.delay_s)
            for chunk in self._chat_chunks(messages, kwargs):
                yield chunk

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        response = self._chat([ChatMessage(role=MessageRole.USER, content=prompt)], kwargs)
        return CompletionResponse(text=response.message.content or "", raw=response.raw)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        await asyncio.sleep(self.delay_s)
        response = self._chat([ChatMessage(role=MessageRole.USER, content=prompt)], kwargs)
        return CompletionResponse(text=response.message.content or "", raw=response.raw)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Iterator[CompletionResponse]:
        return self._completion_chunks(prompt, kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> AsyncIterator[CompletionResponse]:
        async def gen() -> AsyncIterator[CompletionResponse]:
            await asyncio.sleep(self.delay_s)
            for chunk in self._completion_chunks(prompt, kwargs):
                yield chunk

        return gen()

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str)
                            else user_msg)
        # `prepared_for` stands in for a provider-specific tool format another provider rejects.
        return {"messages": messages, "tools": tools, "prepared_for": self.label}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError("expected a tool call")
        return [
            ToolSelection(tool_id=c.tool_call_id or "", tool_name=c.tool_name, tool_kwargs=c.tool_kwargs) for c in calls
        ]
