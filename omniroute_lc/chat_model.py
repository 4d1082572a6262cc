"""ChatOmniRoute: a LangChain chat model that routes every call to one of its candidates, under budgets."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from operator import itemgetter
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from shared_core.budget import Budget, BudgetExceeded, scope_chain
from shared_core.calls import FallbackStream, acall_with_fallbacks, call_with_fallbacks
from shared_core.candidates import Candidate
from shared_core.metering import METADATA_KEY, StreamSettlement
from shared_core.offload import decide_off_loop, off_loop
from shared_core.router import Decision, Router, RoutingError
from shared_core.tokens import count_message_tokens, count_tokens

from . import delegate
from .events import REPORTER_KWARG, config_reporter, failure_reporter
from .limits import CAP_FIELDS, with_declared_limits
from .metering import SummaryRelay, add_chunk, record, settle
from .request import ROUTED_KWARG, RoutedCall, core_messages
from .session import resolve_session
from .structured import (
    CALL_KWARGS,
    CallKwargsToConfig,
    StructuredOutput,
    response_format_output,
    routed_parser,
    tool_parser,
)

__all__ = ["ChatOmniRoute"]


class ChatOmniRoute(BaseChatModel):
    """A chat model that sends each request to the candidate worth its price, within a budget.

    Drop it in wherever a chat model goes (LCEL, LangGraph, agents). Per request it asks the
    shared routing core for a decision — best predicted quality minus λ·cost among the
    candidates that can serve the request (tools, structured output, context window) — which
    reserves the worst-case cost (input plus `max_tokens`, or the candidate's output limit) in
    the session's budget and every budget enclosing it. It then calls the chosen candidate's
    own hooks (`_generate` / `_stream` and async forms; one LangChain run per request), falls
    back to the next-best candidate when one raises before answering, and commits the actual
    cost from the candidate's `usage_metadata` (tiktoken counts when it reports none). The async
    forms (`ainvoke`, `astream`, ...) make the same routing and ledger calls in worker threads
    (`shared_core.offload`), so neither a decision nor a ledger round trip holds the event loop.

    Sessions — which budget a call charges (a scope path: "acme/agent-7" also counts against
    "acme"), first match wins:

    1. the call: `chat.invoke(x, session="agent-7")`;
    2. a binding — `chat.bind(session="agent-7")` — or the model's own session:
       `chat.for_session("agent-7")` / `ChatOmniRoute(session=...)`;
    3. the run config's `configurable["session_id"]`, then `configurable["thread_id"]` (LangGraph);
    4. the run config's `metadata["session_id"]`;
    5. `default_session`; else the router's "default" scope.

    A scope without a budget of its own gets `budget` the first time it is charged; set others
    with `chat.router.set_budget(scope, Budget(...))`. Budgets live in the router, which copies of
    this model (`for_session`, `configurable_fields`) share.

    Response: the candidate's message — its `model_name`, `model_provider` and integer
    `usage_metadata` — with `response_metadata["omniroute"]`: the chosen model, estimated and
    actual cost in USD, λ, the reservation, the session's remaining budget, fallbacks taken.
    When streaming it rides on exactly one chunk, the last. `model="<candidate name>"` per call
    forces a candidate.

    Cache: with LangChain's LLM cache (`set_llm_cache` or `cache=`), a repeated call is answered
    from the cache before routing: nothing is reserved or charged, and its summary says
    `cached: True`, `actual_cost_usd: 0.0`. The cache key includes the session, so one
    session's answer is never served to another. Streaming calls are never cached (as in
    LangChain). A candidate's own cache, callbacks and output_version are bypassed: the router's
    run is the run (its rate limiter is honoured).
    """

    candidates: list[Candidate] = Field(
        default_factory=list, description="Candidates, each with a chat model as `model`."
    )
    router: Router | None = Field(
        None, description="A (fitted) routing core over these candidates; built from their priors if None."
    )
    budget: Budget | None = Field(None, description="The budget each new session starts with.")
    store: str | None = Field(
        None, description="Ledger URL (memory://, sqlite:///path, redis://host/db) for the router built here."
    )
    scope_prefix: str | None = Field(
        None, description="Tenant scope every session is nested in (callers cannot charge outside it)."
    )
    max_fallbacks: int | None = Field(None, description="Candidates to try after a failure (router's default if None).")
    session: str | None = Field(None, description="Charged by every call naming none itself; beats the run config.")
    default_session: str | None = Field(None, description="The session when neither call nor config names one.")
    model: str = Field("omniroute", description="The name this router reports to tracing.")
    max_tokens: int | None = Field(None, description="Output cap per call, passed to the candidate.")
    stop: list[str] | None = Field(None, description="Stop sequences for every call.")
    temperature: float | None = Field(
        None, description="Sampling temperature sent to every candidate (theirs if None)."
    )
    streaming: bool = Field(False, description="Whether invoke streams from the candidate (LangChain's flag).")
    timeout: float | None = Field(
        None, gt=0, description="Seconds each attempt may take before the next candidate is tried (router's if None)."
    )

    # A misspelt setting (budjet=, stroe=) must fail loudly, not leave calls unbudgeted. There is no
    # api_key or max_retries here: those belong to each candidate's own client.
    model_config = ConfigDict(extra="forbid")

    _models: dict[str, BaseChatModel] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _connect_router(self) -> Self:
        if self.router is None:
            if not self.candidates:
                raise ValueError("ChatOmniRoute needs candidates= (each Candidate with model=<chat model>) or router=")
            options: dict[str, Any] = {} if self.max_fallbacks is None else {"max_fallbacks": self.max_fallbacks}
            if self.timeout is not None:
                options["attempt_timeout_s"] = self.timeout
            if self.scope_prefix is not None:
                options["scope_prefix"] = self.scope_prefix
            self.router = Router(self.candidates, default_budget=self.budget, store=self.store, **options)
        else:
            # Settings of a router given ready-made stay on it; repeating them here must agree.
            if self.budget is not None and self.budget != self.router.default_budget:
                raise ValueError("budget= differs from the given router's default_budget: set it on the Router")
            if self.max_fallbacks is not None and self.max_fallbacks != self.router.max_fallbacks:
                raise ValueError("max_fallbacks= differs from the given router's: set it on the Router")
            if self.store is not None:
                raise ValueError("store= applies to the router ChatOmniRoute builds; give the Router its store")
            if self.scope_prefix is not None and self.scope_prefix != self.router.scope_prefix:
                raise ValueError("scope_prefix= differs from the given router's: set it on the Router")
            if self.timeout is not None and self.timeout != self.router.attempt_timeout_s:
                raise ValueError("timeout= differs from the given router's attempt_timeout_s: set it on the Router")
            routed = [c.name for c in self.router.candidates]
            if not self.candidates:
                self.candidates = list(self.router.candidates)
            elif sorted(c.name for c in self.candidates) != sorted(routed):
                raise ValueError(f"candidates {[c.name for c in self.candidates]} differ from the router's {routed}")
        missing = [c.name for c in self.candidates if not isinstance(c.model, BaseChatModel)]
        if missing:
            raise ValueError(f"candidates {missing} have no chat model: give each Candidate model=<a BaseChatModel>")
        for scope in (self.session, self.default_session):
            if scope is not None:
                scope_chain(scope)
        self._models = {c.name: c.model for c in self.candidates}
        for candidate in self.router.candidates:
            limited = with_declared_limits(candidate, self._models[candidate.name])
            if limited is not candidate:
                self.router.update_candidate(limited)
        return self

    @property
    def _llm_type(self) -> str:
        return "omniroute"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model, "candidates": sorted(self._models), "max_tokens": self.max_tokens,
            "session": self.session, "default_session": self.default_session,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # Tracers attribute a run (and its cost) to ls_provider / ls_model_name: when the run was
        # routed before it started, they are the chosen candidate's own.
        routed = kwargs.get(ROUTED_KWARG)
        provider, name = "omniroute", kwargs.get("model") or self.model
        if routed is not None:
            chosen = routed[1].chosen
            own = self._models[chosen]._get_ls_params()
            provider = own.get("ls_provider") or self.router.candidate(chosen).provider or provider
            name = own.get("ls_model_name") or chosen
        params = LangSmithParams(ls_provider=provider, ls_model_name=name, ls_model_type="chat")
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    @property
    def model_name(self) -> str:
        """The name this router reports to tracing (LangChain's usual attribute; same as `model`)."""
        return self.model

    def get_num_tokens(self, text: str) -> int:
        """Tokens of `text` as the router counts them: the most any candidate's tokenizer gives (tiktoken)."""
        return max(count_tokens(text, encoding) for encoding in self._encodings())

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Prompt tokens of `messages` (and `tools`) as the router counts them for its budget: the most
        any candidate gives (tiktoken, images by the provider's rule). Works with `trim_messages`."""
        request = core_messages(messages)
        schemas = [convert_to_openai_tool(t) for t in tools or ()]
        return max(
            count_message_tokens(request, c.encoding, tools=schemas, image_rule=c.image_rule)
            for c in self.router.candidates
        )

    def _encodings(self) -> set[str]:
        return {c.encoding for c in self.router.candidates}

    def for_session(self, session: str) -> ChatOmniRoute:
        """This model with every call charged to `session` (e.g. "acme/agent-7"), sharing the budgets."""
        scope_chain(session)
        return self.model_copy(update={"session": session})

    # ------------------------------------------------------------------ public entry points
    # Only the public methods see a standalone call's config, so the session is resolved here
    # and travels to the hooks as the `session` kwarg (a call's own kwarg or binding wins).
    def _with_session(self, config: RunnableConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Call keywords a wrapping runnable could not pass on (with_structured_output(include_raw=True))
        # travel in the config; the call's own keywords win.
        kwargs = {**(config.get("configurable") or {}).get(CALL_KWARGS, {}), **kwargs}
        if self.temperature is not None:
            kwargs.setdefault("temperature", self.temperature)
        return {**kwargs, "session": resolve_session(kwargs.get("session"), self.session, config, self.default_session)}

    def _release(self, routed: tuple[RoutedCall, Decision] | None) -> None:
        # Frees the hold of a run that ended before its call (a callback raised, the reader never
        # read): once the call was settled — or fell back to another decision — this does nothing.
        if routed is not None:
            self.router.release(routed[1])

    async def _arelease(self, routed: tuple[RoutedCall, Decision] | None) -> None:
        if routed is not None:
            await off_loop(partial(self.router.release, routed[1]))

    @staticmethod
    def _with_reporter(
        config: RunnableConfig, kwargs: dict[str, Any], *, asynchronous: bool
    ) -> tuple[RunnableConfig, dict[str, Any]]:
        # LangChain gives a stream's hook no run manager: the run id is fixed here so that failed
        # attempts can still be reported on the run that callback handlers see.
        run_id = config.get("run_id") or uuid.uuid4()
        config = {**config, "run_id": run_id}
        return config, {**kwargs, REPORTER_KWARG: config_reporter(config, run_id, asynchronous=asynchronous)}

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        for plumbing in (REPORTER_KWARG, ROUTED_KWARG):  # not parameters of the call
            kwargs.pop(plumbing, None)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        for plumbing in (REPORTER_KWARG, ROUTED_KWARG):  # a cache key must not depend on them
            kwargs.pop(plumbing, None)
        return super()._get_llm_string(stop=stop, **kwargs)

    def _routes_early(self) -> bool:
        """Whether to route before LangChain starts the run, so tracing names the chosen model: not
        when a cache may answer (no money should be held for it)."""
        return self.cache is False or (self.cache is None and get_llm_cache() is None)

    def _route_early(
        self, input: LanguageModelInput, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RoutedCall, Decision] | None:
        """The call routed before its run (see _routes_early); None to route in the hook instead, also
        when routing fails (the error then surfaces inside the run, where callback handlers see it)."""
        if not self._routes_early():
            return None
        try:
            return self._route(self._convert_input(input).to_messages(), stop, kwargs)
        except (RoutingError, BudgetExceeded):
            return None

    async def _aroute_early(
        self, input: LanguageModelInput, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RoutedCall, Decision] | None:
        """_route_early in routing's worker threads: the event loop goes on while it decides."""
        if not self._routes_early():
            return None

        def request() -> tuple[RoutedCall, dict[str, Any]]:
            return self._request(self._convert_input(input).to_messages(), stop, kwargs)

        try:
            return await decide_off_loop(self.router, request, self._release)
        except (RoutingError, BudgetExceeded):
            return None

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Route and answer one input."""
        config = ensure_config(config)
        kwargs = self._with_session(config, kwargs)
        if ROUTED_KWARG in kwargs:  # a stream LangChain turned into an invoke (disable_streaming): routed already
            return super().invoke(input, config, stop=stop, **kwargs)
        routed = self._route_early(input, stop, kwargs)
        try:
            return super().invoke(input, config, stop=stop, **kwargs, **{ROUTED_KWARG: routed})
        finally:
            self._release(routed)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Route and answer one input, asynchronously."""
        config = ensure_config(config)
        kwargs = self._with_session(config, kwargs)
        if ROUTED_KWARG in kwargs:  # a stream LangChain turned into an invoke (disable_streaming): routed already
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        routed = await self._aroute_early(input, stop, kwargs)
        try:
            answer = await super().ainvoke(input, config, stop=stop, **kwargs, **{ROUTED_KWARG: routed})
        except BaseException:
            await self._arelease(routed)
            raise
        if METADATA_KEY not in answer.response_metadata:  # with a summary the call was settled: nothing is held
            await self._arelease(routed)
        return answer

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Route one input and stream the chosen candidate's answer (routed when iteration starts)."""
        config, kwargs = self._with_reporter(ensure_config(config), kwargs, asynchronous=False)
        kwargs = self._with_session(config, kwargs)
        stream = super().stream

        def chunks() -> Iterator[AIMessageChunk]:
            routed = self._route_early(input, stop, kwargs)
            try:
                yield from stream(input, config, stop=stop, **kwargs, **{ROUTED_KWARG: routed})
            finally:
                self._release(routed)

        return chunks()

    def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Route one input and stream the chosen candidate's answer, asynchronously."""
        config, kwargs = self._with_reporter(ensure_config(config), kwargs, asynchronous=True)
        kwargs = self._with_session(config, kwargs)
        astream = super().astream

        async def chunks() -> AsyncIterator[AIMessageChunk]:
            routed = await self._aroute_early(input, stop, kwargs)
            inner = astream(input, config, stop=stop, **kwargs, **{ROUTED_KWARG: routed})
            settled = False  # the closing chunk carries the summary of the settled stream: nothing is held then
            try:
                async for chunk in inner:
                    settled = settled or METADATA_KEY in chunk.response_metadata
                    yield chunk
            finally:
                try:
                    await inner.aclose()  # `async for` does not pass on a reader's aclose(): settle first
                finally:
                    if not settled:
                        await self._arelease(routed)

        return chunks()

    # ------------------------------------------------------------------ tools and structured output
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; the chosen candidate formats them and `tool_choice` (and `kwargs`) at call time.

        Only candidates whose chat model implements `bind_tools` (and whose Candidate allows
        tools) are chosen for these calls. `response_format=` (a schema, or OpenAI's json_schema
        format as LangChain agents bind a ProviderStrategy) asks every answer for JSON matching it,
        which each candidate produces in its own JSON schema mode; candidates without one are not chosen.
        """
        marker = kwargs.pop("ls_structured_output_format", None)
        response_format = kwargs.pop("response_format", None)
        extra: dict[str, Any] = {}
        if marker is not None:
            # with_structured_output(method="function_calling") binds its schema as a tool through here.
            spec = StructuredOutput(marker["schema"], "function_calling")
            extra = {"ls_structured_output_format": marker, "structured_output": spec}
        elif response_format is not None:
            extra = {"structured_output": response_format_output(response_format)}
        # An output cap (an agent's model_settings arrive here) is the call's, reserved and sent by the
        # router: as a tool option the candidate would bind it over the cap that was reserved.
        caps = {name: kwargs.pop(name) for name in CAP_FIELDS if name in kwargs}
        return self.bind(tools=list(tools), tool_choice=tool_choice, tool_options=kwargs, **caps, **extra)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: str = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers parsed into `schema`, by any method the chosen candidate supports.

        "function_calling" binds the schema as the tool every answer calls (any tool-calling
        candidate; `strict` goes to candidates whose `bind_tools` takes it). "json_schema" and
        "json_mode" use the chosen candidate's own `with_structured_output(schema, method=...,
        strict=...)` request and parser; candidates that do not support the method are not
        chosen; their answers are parsed once complete, so streaming yields the parsed object
        once. Only candidates whose Candidate allows structured output are chosen either way.
        Call keywords (`session=`, `model=`) reach the router, with `include_raw` too.
        """
        spec = StructuredOutput(schema, method, strict)
        if kwargs:
            raise ValueError(f"unsupported arguments for with_structured_output: {sorted(kwargs)}")
        marker = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if spec.native:
            llm = self.bind(structured_output=spec, ls_structured_output_format=marker)
            parser = routed_parser(spec, self._models)
        else:
            name = convert_to_openai_tool(schema)["function"]["name"]
            strictness = {} if strict is None else {"strict": strict}
            llm = self.bind_tools([schema], tool_choice="any", ls_structured_output_format=marker, **strictness)
            parser = tool_parser(schema, name)
        if not include_raw:
            return CallKwargsToConfig(llm | parser)
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        chain = RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")
        return CallKwargsToConfig(chain)

    # ------------------------------------------------------------------ hooks
    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RoutedCall, dict[str, Any]]:
        """The call as the router sees it, and the keyword arguments of its `Router.decide`."""
        session = resolve_session(kwargs.get("session"), self.session, None, self.default_session)
        call = RoutedCall.from_call(messages, stop or self.stop, kwargs, session=session, max_tokens=self.max_tokens)
        return call, dict(
            request=call.messages, session=call.session, tools=call.tool_schemas(),
            structured_output=call.structured is not None, max_tokens=call.max_tokens,
            exclude=call.unsupported(self._models), model=call.model,
        )

    def _route(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RoutedCall, Decision]:
        routed = kwargs.get(ROUTED_KWARG)
        if routed is not None:  # decided before the run started (see _route_early)
            return routed
        call, arguments = self._request(messages, stop, kwargs)
        return call, self.router.decide(**arguments)

    def _settled(self, call: RoutedCall, decision: Decision, result: ChatResult) -> ChatResult:
        summary = settle(self.router, decision, call.session, [g.message for g in result.generations])
        for generation in result.generations:
            generation.message.response_metadata = {**generation.message.response_metadata, METADATA_KEY: summary}
        return result

    async def _aroute(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[RoutedCall, Decision]:
        """_route, deciding in routing's worker threads (a call routed before its run needs none)."""
        routed = kwargs.get(ROUTED_KWARG)
        if routed is not None:
            return routed
        return await decide_off_loop(self.router, partial(self._request, messages, stop, kwargs), self._release)

    async def _asettled(self, call: RoutedCall, decision: Decision, result: ChatResult) -> ChatResult:
        messages = [g.message for g in result.generations]
        summary = await off_loop(partial(settle, self.router, decision, call.session, messages))
        for generation in result.generations:
            generation.message.response_metadata = {**generation.message.response_metadata, METADATA_KEY: summary}
        return result

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call, decision = self._route(messages, stop, kwargs)

        def run(candidate: Candidate, decision: Decision) -> ChatResult:
            model = self._models[candidate.name]
            kwargs = call.candidate_kwargs(candidate, model, decision)
            return delegate.generate(model, messages, call.stop, run_manager, kwargs)

        result, decision = call_with_fallbacks(self.router, decision, run, on_failure=failure_reporter(run_manager))
        return self._settled(call, decision, result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call, decision = await self._aroute(messages, stop, kwargs)

        async def run(candidate: Candidate, decision: Decision) -> ChatResult:
            model = self._models[candidate.name]
            kwargs = call.candidate_kwargs(candidate, model, decision)
            return await delegate.agenerate(model, messages, call.stop, run_manager, kwargs)

        result, decision = await acall_with_fallbacks(
            self.router, decision, run, on_failure=failure_reporter(run_manager)
        )
        return await self._asettled(call, decision, result)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call, decision = self._route(messages, stop, kwargs)

        def start(candidate: Candidate, decision: Decision) -> Iterator[ChatGenerationChunk]:
            model = self._models[candidate.name]
            kwargs = call.candidate_kwargs(candidate, model, decision, streaming=True)
            return delegate.stream(model, messages, call.stop, run_manager, kwargs)

        routed: FallbackStream[ChatGenerationChunk] = FallbackStream(
            self.router, decision, start, on_failure=failure_reporter(run_manager) or kwargs.get(REPORTER_KWARG)
        )
        books, relay = StreamSettlement(self.router, routed), SummaryRelay()
        chunks = iter(routed)
        try:
            for chunk in chunks:
                add_chunk(books, chunk.message)
                yield from relay.feed(chunk)
        except BaseException as error:
            books.interrupted(error)
            raise
        finally:
            chunks.close()
        yield relay.closing_chunk(record(books.decision, call.session, books.finished()))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call, decision = await self._aroute(messages, stop, kwargs)

        def start(candidate: Candidate, decision: Decision) -> AsyncIterator[ChatGenerationChunk]:
            model = self._models[candidate.name]
            kwargs = call.candidate_kwargs(candidate, model, decision, streaming=True)
            return delegate.astream(model, messages, call.stop, run_manager, kwargs)

        routed: FallbackStream[ChatGenerationChunk] = FallbackStream(
            self.router, decision, start, on_failure=failure_reporter(run_manager) or kwargs.get(REPORTER_KWARG)
        )
        books, relay = StreamSettlement(self.router, routed), SummaryRelay()
        chunks = routed.__aiter__()
        try:
            async for chunk in chunks:
                add_chunk(books, chunk.message)
                for ready in relay.feed(chunk):
                    yield ready
        except BaseException as error:
            await off_loop(partial(books.interrupted, error))
            raise
        finally:
            await chunks.aclose()
        settlement = await off_loop(books.finished)
        yield relay.closing_chunk(record(books.decision, call.session, settlement))

    def _convert_cached_generations(self, cache_val: list[Generation]) -> list[ChatGeneration]:
        generations = super()._convert_cached_generations(cache_val)
        for generation in generations:
            summary = generation.message.response_metadata.get(METADATA_KEY)
            if summary:
                # A cached answer charges nothing: neither the call nor the attempts that failed before it.
                failures = [{**f, "charged_usd": 0.0} for f in summary.get("failures", ())]
                replay = {**summary, "cached": True, "actual_cost_usd": 0.0, "remaining_usd": None,
                          "failures": failures}
                generation.message = generation.message.model_copy(
                    update={"response_metadata": {**generation.message.response_metadata, METADATA_KEY: replay}}
                )
        return generations
