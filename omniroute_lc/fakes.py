"""An offline stand-in for a hosted tool-calling chat model: for examples, demos and tests."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import Field

from shared_core.tokens import count_tokens

__all__ = ["FakeToolChatModel", "arguments_from_prompt"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# A quoted span opens at the start or after a space or "(", so apostrophes inside words don't count.
_QUOTED = re.compile(r"""(?:^|(?<=[\s(]))(['"])(.+?)\1""")
_FORCED = ("any", "required")
_REPLY_WORDS = 24


def _json_type(spec: Mapping[str, Any]) -> str:
    if "type" in spec:
        return spec["type"]
    for option in spec.get("anyOf", ()):
        if option.get("type") not in (None, "null"):
            return option["type"]
    return "object"


def arguments_from_prompt(parameters: Mapping[str, Any], prompt: str) -> dict[str, Any]:
    """Arguments for a JSON schema read from the prompt: numbers in order, quoted text, else the prompt."""
    numbers = iter(_NUMBER.findall(prompt))
    quoted = iter(text for _, text in _QUOTED.findall(prompt))
    fill: dict[str, Callable[[], Any]] = {
        "integer": lambda: int(float(next(numbers, 0))),
        "number": lambda: float(next(numbers, 0)),
        "string": lambda: next(quoted, prompt),
        "boolean": lambda: False,
        "array": list,
        "object": dict,
    }
    return {name: fill[_json_type(spec)]() for name, spec in parameters.get("properties", {}).items()}


def _tool_choice_name(tool_choice: Any) -> str | None:
    """"any", "auto", "none" or a tool name, from the spellings LangChain and providers use."""
    if tool_choice is None or tool_choice is False:
        return None
    if tool_choice is True:
        return "any"
    if isinstance(tool_choice, dict):
        return tool_choice.get("function", tool_choice).get("name")
    return str(tool_choice)


def _last_human_text(messages: Sequence[BaseMessage]) -> str:
    return next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")


class FakeToolChatModel(BaseChatModel):
    """Answers from its prompt, offline, the way a hosted tool-calling model answers.

    With tools bound it calls one (the forced one, one the prompt names, else the first) with
    arguments read from the last human message: numbers in order for numeric fields, quoted
    text for string fields, else the message itself. After a tool result it answers in text, or,
    made to call one (tool_choice "any" or "required"), calls the first it has not called yet since
    the last human message, as a model finishes with an agent's answer tool.
    Without tools it replies with `answers[prompt]` or an echo. It reports integer
    `usage_metadata` (tiktoken cl100k_base), `model_name` and `model_provider`, once per stream
    on the last chunk; honours stop sequences and `max_tokens`; and supports
    `with_structured_output` by function calling, JSON schema and JSON mode (the schema travels
    in `response_format`, as OpenAI's JSON schema mode sends it).
    """

    model_name: str = Field("fake-tool-model", description="Reported as response_metadata['model_name'].")
    answers: dict[str, str] = Field(default_factory=dict, description="Scripted replies by prompt text.")
    latency_s: float = Field(0.0, ge=0, description="Seconds each call waits before answering.")
    max_tokens: int | None = Field(None, gt=0, description="Output cap of every call (a call's max_tokens wins).")

    @property
    def _llm_type(self) -> str:
        return "fake-tool-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools in OpenAI's format; tool_choice may be "any", "auto", "none" or a tool name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=_tool_choice_name(tool_choice), **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: str = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Structured output by "function_calling", "json_schema" or "json_mode"."""
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_schema", "json_mode"):
            raise ValueError(f"unknown structured output method {method!r}")
        if include_raw or kwargs:
            raise NotImplementedError("the fake's JSON modes take neither include_raw nor extra arguments")
        kind = "json_schema" if method == "json_schema" else "json_object"
        llm = self.bind(
            response_format={"type": kind, "schema": convert_to_json_schema(schema)},
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        if isinstance(schema, type) and is_basemodel_subclass(schema):
            return llm | PydanticOutputParser(pydantic_object=schema)
        return llm | JsonOutputParser()

    # ------------------------------------------------------------------ answering
    def _respond(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> AIMessage:
        prompt = _last_human_text(messages)
        tools = kwargs.get("tools") or []
        choice = kwargs.get("tool_choice")
        after_tool = bool(messages) and isinstance(messages[-1], ToolMessage)
        response_format = kwargs.get("response_format")
        forced = choice not in (None, "auto", "none")
        tool_calls = []
        if tools and choice != "none" and (forced or not after_tool):
            turn = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)), 0)
            called = {c["name"] for m in messages[turn:] if isinstance(m, AIMessage) for c in m.tool_calls}
            tool = self._pick_tool(tools, choice, prompt, called if after_tool else set())
            args = arguments_from_prompt(tool["function"].get("parameters", {}), prompt)
            tool_calls = [{"name": tool["function"]["name"], "args": args, "id": f"call_{uuid.uuid4().hex[:12]}",
                           "type": "tool_call"}]
            text = ""
        elif response_format is not None:
            text = json.dumps(arguments_from_prompt(response_format["schema"], prompt), ensure_ascii=False)
        elif after_tool:
            text = f"The tool returned: {messages[-1].text}"
        else:
            text = self.answers.get(prompt) or f"{self.model_name} heard: " + " ".join(prompt.split()[:_REPLY_WORDS])
        text = self._limit(text, stop, kwargs.get("max_tokens", self.max_tokens))
        produced = text + "".join(json.dumps(c["args"]) for c in tool_calls)
        input_tokens = count_tokens("\n".join(m.text for m in messages))
        output_tokens = count_tokens(produced)
        return AIMessage(
            content=text,
            tool_calls=tool_calls,
            usage_metadata={"input_tokens": input_tokens, "output_tokens": output_tokens,
                            "total_tokens": input_tokens + output_tokens},
            response_metadata={"model_name": self.model_name, "model_provider": "fake"},
        )

    @staticmethod
    def _pick_tool(tools: list[dict[str, Any]], choice: str | None, prompt: str, called: set[str]) -> dict[str, Any]:
        names = [t["function"]["name"] for t in tools]
        if choice not in (None, "auto", *_FORCED):
            if choice not in names:
                raise ValueError(f"tool_choice {choice!r} is not a bound tool; bound: {names}")
            return tools[names.index(choice)]
        if called:  # made to call one after a tool result: calling the same again would loop
            return next((t for t, n in zip(tools, names, strict=False) if n not in called), tools[0])
        return next((t for t, n in zip(tools, names, strict=False) if n in prompt), tools[0])

    @staticmethod
    def _limit(text: str, stop: list[str] | None, max_tokens: int | None) -> str:
        for s in stop or ():
            text = text.split(s, 1)[0]
        if max_tokens is not None:
            words = text.split(" ")
            while words and count_tokens(" ".join(words)) > max_tokens:
                words.pop()
            text = " ".join(words)
        return text

    @staticmethod
    def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
        for piece in re.findall(r"\S+\s*|\s+", message.content):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        for i, call in enumerate(message.tool_calls):
            chunk = tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=i)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=message.usage_metadata, response_metadata=message.response_metadata,
            chunk_position="last",
        ))

    # ------------------------------------------------------------------ LangChain hooks
    def _wait(self) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)

    async def _await(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._wait()
        return ChatResult(generations=[ChatGeneration(message=self._respond(messages, stop, kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await self._await()
        return ChatResult(generations=[ChatGeneration(message=self._respond(messages, stop, kwargs))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self._wait()
        for chunk in self._chunks(self._respond(messages, stop, kwargs)):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        await self._await()
        for chunk in self._chunks(self._respond(messages, stop, kwargs)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
