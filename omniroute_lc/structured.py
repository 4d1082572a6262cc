"""Structured output through the router: the chosen candidate applies its own method and parser."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableLambda, RunnableSequence
from langchain_core.runnables.config import ensure_config
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel

from shared_core.metering import METADATA_KEY

__all__ = [
    "CALL_KWARGS", "CallKwargsToConfig", "METHODS", "StructuredOutput", "binding_kwargs", "response_format_output",
    "routed_parser", "tool_parser",
]

#: The `config["configurable"]` key under which CallKwargsToConfig hands call keywords to ChatOmniRoute.
CALL_KWARGS = "omniroute_call_kwargs"

#: The `with_structured_output` methods ChatOmniRoute accepts.
METHODS = ("function_calling", "json_schema", "json_mode")

# What a candidate's with_structured_output raises for a method or schema it does not support.
_UNSUPPORTED = (NotImplementedError, ValueError, TypeError)


def binding_kwargs(runnable: Runnable, model: BaseChatModel) -> dict[str, Any]:
    """The call kwargs that `model.bind_tools(...)` / `.with_structured_output(...)` bound to `model`."""
    kwargs: dict[str, Any] = {}
    while isinstance(runnable, RunnableBinding):
        kwargs = {**runnable.kwargs, **kwargs}  # an outer binding overrides an inner one, as at call time
        runnable = runnable.bound
    if runnable is not model:
        raise TypeError(f"expected a binding of {type(model).__name__}, got {type(runnable).__name__}")
    return kwargs


@dataclass(frozen=True, eq=False)
class StructuredOutput:
    """A structured-output request: the schema, and the method the chosen candidate applies.

    With "function_calling" the schema travels as a bound tool, formatted by the chosen candidate
    and parsed from its tool call, like any tool. With "json_schema" / "json_mode" the chosen
    candidate's own `with_structured_output(schema, method=...)` supplies the request kwargs and
    the parser; candidates that do not support the method are not chosen.
    """

    schema: Any
    method: str
    strict: bool | None = None
    _support: dict[str, tuple[dict[str, Any], Runnable] | None] = field(
        default_factory=dict, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown structured output method {self.method!r}; choose one of {METHODS}")

    @property
    def native(self) -> bool:
        """Whether the candidate's own structured-output mode serves it (not a bound tool)."""
        return self.method != "function_calling"

    def support(self, name: str, model: BaseChatModel) -> tuple[dict[str, Any], Runnable] | None:
        """The candidate's call kwargs and parser for this schema and method; None when unsupported."""
        with self._lock:
            if name not in self._support:
                self._support[name] = self._split(model)
            return self._support[name]

    def _split(self, model: BaseChatModel) -> tuple[dict[str, Any], Runnable] | None:
        options = {} if self.strict is None else {"strict": self.strict}
        try:
            runnable = model.with_structured_output(self.schema, method=self.method, **options)
        except _UNSUPPORTED:
            return None
        # Providers build it as `model.bind(...) | parser`; any other shape cannot be replayed.
        if not isinstance(runnable, RunnableSequence):
            return None
        first, *rest = runnable.steps
        try:
            kwargs = binding_kwargs(first, model)
        except TypeError:
            return None
        return kwargs, rest[0] if len(rest) == 1 else RunnableSequence(*rest)


def response_format_output(response_format: Any) -> StructuredOutput:
    """The structured output `bind_tools(tools, response_format=...)` asks for, in each candidate's own JSON
    schema mode: OpenAI's {"type": "json_schema", "json_schema": {...}} (how LangChain agents bind a
    ProviderStrategy), or a schema as `with_structured_output` takes it."""
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        spec = response_format["json_schema"]
        # The schema's name travels beside it; as the title, every integration names the output by it.
        return StructuredOutput({**spec["schema"], "title": spec["name"]}, "json_schema", spec.get("strict"))
    return StructuredOutput(response_format, "json_schema")


def routed_parser(spec: StructuredOutput, models: Mapping[str, BaseChatModel]) -> Runnable[BaseMessage, Any]:
    """A parser that applies the parser of whichever candidate answered (read from the message)."""

    def parse(message: BaseMessage) -> Any:
        info = message.response_metadata.get(METADATA_KEY)
        if not info:
            raise ValueError(
                f"structured output needs a message routed by ChatOmniRoute (no {METADATA_KEY!r} metadata)"
            )
        support = spec.support(info["model"], models[info["model"]])
        if support is None:
            raise ValueError(f"candidate {info['model']!r} does not support method {spec.method!r}")
        return support[1].invoke(message)

    return RunnableLambda(parse, name="OmniRouteStructuredParser")


def tool_parser(schema: Any, name: str) -> Runnable[BaseMessage, Any]:
    """The parser of a function-calling answer: the schema's pydantic object, or the tool call's arguments."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):  # pydantic v2 or v1
        return PydanticToolsParser(tools=[schema], first_tool_only=True)
    return JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)


class CallKwargsToConfig(Runnable[Any, Any]):
    """A chain whose call keywords (`session=`, `model=`, `max_tokens=`) reach ChatOmniRoute inside it.

    Composite runnables (a RunnableMap, a step after the first) drop call keywords; the run config
    reaches every step, so the keywords travel there, under CALL_KWARGS.
    """

    def __init__(self, bound: Runnable[Any, Any]) -> None:
        self.bound = bound

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.bound.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.bound.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.bound.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.bound.get_output_schema(config)

    @staticmethod
    def _config(config: RunnableConfig | None, kwargs: dict[str, Any]) -> RunnableConfig | None:
        if not kwargs:
            return config
        config = ensure_config(config)
        configurable = dict(config.get("configurable") or {})
        configurable[CALL_KWARGS] = {**configurable.get(CALL_KWARGS, {}), **kwargs}
        return {**config, "configurable": configurable}

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """The chain's answer, its call keywords handed to the router."""
        return self.bound.invoke(input, self._config(config, kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """The async form of invoke."""
        return await self.bound.ainvoke(input, self._config(config, kwargs))

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """The chain's stream, its call keywords handed to the router."""
        yield from self.bound.stream(input, self._config(config, kwargs))

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """The async form of stream."""
        async for chunk in self.bound.astream(input, self._config(config, kwargs)):
            yield chunk
