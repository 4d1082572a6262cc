"""Fake chat models for the LangChain adapter's tests: a tool-calling fake and one that always fails."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Candidate

__all__ = ["FakeToolChatModel", "FailingChatModel", "candidate", "two_candidates"]


class FailingChatModel(BaseChatModel):
    """Raises `error` on every call — at once, or after `chunks_before_error` chunks when streaming."""

    # Refused, not timed out: a call that never reached the provider is released, where one that
    # timed out waiting for its answer is charged its worst case (shared_core.fallbacks.may_be_billed).
    error: Exception = Field(default_factory=lambda: ConnectionRefusedError("provider refused the connection"))
    chunks_before_error: int = 0
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "failing-fake"

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        """Accepts tools like a tool-calling model (and then fails like every other call)."""
        return self.bind(tools=list(tools), tool_choice=tool_choice, **kwargs)

    def _fail(self) -> NoReturn:
        self.calls += 1
        raise self.error

    def _chunks(self) -> Iterator[ChatGenerationChunk]:
        for i in range(self.chunks_before_error):
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"part{i} "))
        self._fail()

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self._fail()

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self._fail()

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield from self._chunks()

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            yield chunk


def candidate(name: str, model: BaseChatModel | None = None, *, input_price: float, output_price: float,
              quality: float, **options: Any) -> Candidate:
    """A candidate called `name`, answered by `model` (a FakeToolChatModel reporting that name by default)."""
    return Candidate(name=name, input_price=input_price, output_price=output_price, prior_quality=quality,
                     model=model if model is not None else FakeToolChatModel(model_name=name), **options)


def two_candidates(**options: Any) -> list[Candidate]:
    """A cheap and a frontier candidate at real prices (gpt-4o-mini and gpt-4o, USD per 1M tokens)."""
    return [
        candidate("gpt-4o-mini", input_price=0.15, output_price=0.60, quality=0.70, **options),
        candidate("gpt-4o", input_price=2.50, output_price=10.00, quality=0.85, **options),
    ]

