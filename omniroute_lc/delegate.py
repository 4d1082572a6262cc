"""Calling a candidate at hook level, the way its own public methods would after their callbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

__all__ = ["generate", "agenerate", "stream", "astream"]

# The router's own run already fired on_chat_model_start; calling the candidate's hooks (not its
# invoke) keeps one run per request, so callbacks and usage counters see every call once. A
# candidate's rate limiter lives in its public methods, so it is honoured here.


def _as_chunks(result: ChatResult) -> Iterator[ChatGenerationChunk]:
    """A non-streaming candidate's answer as a one-chunk stream."""
    for generation in result.generations:
        message = generation.message.model_dump(exclude={"type", "tool_call_chunks", "chunk_position"})
        yield ChatGenerationChunk(message=AIMessageChunk(**message, chunk_position="last"),
                                  generation_info=generation.generation_info)


def generate(
    model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
    run_manager: CallbackManagerForLLMRun | None, kwargs: dict[str, Any],
) -> ChatResult:
    """The candidate's `_generate`, after its rate limiter."""
    if model.rate_limiter:
        model.rate_limiter.acquire(blocking=True)
    return model._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


async def agenerate(
    model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
    run_manager: AsyncCallbackManagerForLLMRun | None, kwargs: dict[str, Any],
) -> ChatResult:
    """The candidate's `_agenerate`, after its rate limiter."""
    if model.rate_limiter:
        await model.rate_limiter.aacquire(blocking=True)
    return await model._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)


def stream(
    model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
    run_manager: CallbackManagerForLLMRun | None, kwargs: dict[str, Any],
) -> Iterator[ChatGenerationChunk]:
    """The candidate's `_stream` (its `_generate` as one chunk when it cannot stream)."""
    if type(model)._stream is BaseChatModel._stream:
        yield from _as_chunks(generate(model, messages, stop, run_manager, kwargs))
        return
    if model.rate_limiter:
        model.rate_limiter.acquire(blocking=True)
    yield from model._stream(messages, stop=stop, run_manager=run_manager, **kwargs)


async def astream(
    model: BaseChatModel, messages: list[BaseMessage], stop: list[str] | None,
    run_manager: AsyncCallbackManagerForLLMRun | None, kwargs: dict[str, Any],
) -> AsyncIterator[ChatGenerationChunk]:
    """The candidate's `_astream` (its `_agenerate` as one chunk when it cannot stream at all)."""
    cls = type(model)
    if cls._astream is BaseChatModel._astream and cls._stream is BaseChatModel._stream:
        for chunk in _as_chunks(await agenerate(model, messages, stop, run_manager, kwargs)):
            yield chunk
        return
    if model.rate_limiter:
        await model.rate_limiter.aacquire(blocking=True)
    async for chunk in model._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
        yield chunk
