"""OmniRouteLLM: a LlamaIndex FunctionCallingLLM that sends every call to the candidate the core picks."""

from __future__ import annotations

import logging
import pickle
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import BaseModel, Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import BaseTool

from shared_core.budget import Budget, LedgerStore
from shared_core.calls import (
    FallbackStream,
    Settlement,
    acall_with_fallbacks,
    asettle_usage,
    call_with_fallbacks,
    settle_usage,
)
from shared_core.candidates import Candidate
from shared_core.fallbacks import Attempt
from shared_core.metering import StreamSettlement, routing_record
from shared_core.offload import decide_off_loop, off_loop
from shared_core.router import Decision, Router

from .held import claim
from .limits import can_call_tools, capped, stream_usage_kwargs, with_declared_limits
from .messages import (
    annotate,
    chat_messages,
    output_text,
    prompt_text,
    provider_usage,
    routed_model,
    to_request,
    tool_schemas,
)
from .sharing import RouterRef, share_router
from .spend import CandidateFailedEvent, RoutedCallEndEvent

__all__ = ["OmniRouteLLM"]

logger = logging.getLogger("omniroute")
dispatcher = get_dispatcher(__name__)

Response = TypeVar("Response", ChatResponse, CompletionResponse)
AnyResponse = ChatResponse | CompletionResponse

# The keyword that carries a tool call prepared by `_prepare_chat_with_tools` to the chat call.
_PREPARED = "omniroute_prepared_tools"
# The keyword that marks a call as a structured-output request (`structured_predict` and friends).
_STRUCTURED = "structured_output"


# The call keywords the router consumes (the rest go to the candidate).
_ROUTING = ("session", "model", "max_tokens", _STRUCTURED)


@dataclass(frozen=True)
class _PreparedTools:
    """A tool call to route when it is made (a stream made but never read holds no money): the
    request and its routing keywords, and the arguments each candidate formats."""

    request: list[dict[str, Any]]
    routing: dict[str, Any]
    tools: Sequence[BaseTool]
    options: dict[str, Any]

    def arguments(self, llm: FunctionCallingLLM) -> dict[str, Any]:
        """The candidate's own chat arguments: each provider formats tool schemas its own way."""
        return llm._prepare_chat_with_tools_compat(self.tools, **self.options)


def _check_models(candidates: Sequence[Candidate]) -> None:
    for c in candidates:
        if not isinstance(c.model, LLM):
            raise TypeError(f"candidate {c.name!r}: .model must be a LlamaIndex LLM, got {type(c.model).__name__}")


def _check_tools(candidates: Sequence[Candidate]) -> None:
    # Tool support a candidate does not state is read from its LLM (with_declared_limits): only a
    # stated supports_tools=True can contradict it.
    for c in candidates:
        if c.supports_tools and not can_call_tools(c.model):
            raise ValueError(
                f"candidate {c.name!r} has supports_tools=True but its {type(c.model).__name__} is not a "
                "function-calling LLM, so a request with tools routed to it would fail: pass supports_tools=False "
                "(or leave it unset to read it from the LLM)"
            )


class _StreamRelay:
    """Passes a stream's chunks on, marked with the candidate streaming them, and tells the core's
    books what each produced; the closing chunk carries the settlement."""

    def __init__(self, router: Router, stream: FallbackStream) -> None:
        self.books = StreamSettlement(router, stream)
        self.last: AnyResponse | None = None

    def passing(self, chunk: Response) -> Response:
        """The chunk, marked with the candidate that is streaming it."""
        # A LlamaIndex chunk repeats the whole answer so far, with the usage reported for it.
        self.books.restate(output_text(chunk), provider_usage(chunk))
        self.last = chunk
        return annotate(chunk, self.books.decision)

    def interrupted(self, error: BaseException) -> None:
        """The stream failed or was closed: settled by the core's rule (and reported) if it had started."""
        self._interrupted(self.books.interrupted(error))

    async def ainterrupted(self, error: BaseException) -> None:
        """interrupted, settling in routing's worker threads (the event is dispatched on the loop)."""
        self._interrupted(await off_loop(partial(self.books.interrupted, error)))

    def _interrupted(self, settlement: Settlement | None) -> None:
        if settlement is not None:
            _report(self.books.decision, settlement)

    def finished(self) -> AnyResponse | None:
        """Settle the complete stream; the closing chunk with costs and usage (None if it was empty)."""
        return self._finished(self.books.finished())

    async def afinished(self) -> AnyResponse | None:
        """finished, settling in routing's worker threads (the event is dispatched on the loop)."""
        return self._finished(await off_loop(self.books.finished))

    def _finished(self, settlement: Settlement) -> AnyResponse | None:
        decision = self.books.decision
        closing = None if self.last is None else annotate(self.last, decision, settlement, final_chunk=True)
        return _report(decision, settlement, closing)


def _report(decision: Decision, settlement: Settlement, response: Response | None = None) -> Response | None:
    """Tell LlamaIndex instrumentation (e.g. a SpendTracker) that a routed call was settled."""
    dispatcher.event(RoutedCallEndEvent(record=routing_record(decision, settlement), response=response))
    return response


def _failed(attempt: Attempt) -> None:
    """Tell LlamaIndex instrumentation that an attempt failed (the fallback loop's on_failure)."""
    dispatcher.event(CandidateFailedEvent(**attempt.to_dict()))


def _structured(llm_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A structured-output program's LLM keywords, marked so that the router honours the capability."""
    return {**(llm_kwargs or {}), _STRUCTURED: True}


class OmniRouteLLM(FunctionCallingLLM):
    """A LlamaIndex LLM that routes each call to a candidate LLM under per-session budgets.

    Build it from candidates (`Candidate(model=<LlamaIndex LLM>, ...)`, a `Router` is made over
    them) or from a fitted `router`. `budget=` is the budget each new session starts with, as in
    `ChatOmniRoute`: the instance's session, a `for_session(...)` copy's and a call's `session=`
    scope each get it the first time they are charged. Per call, `session=`, `model=` and
    `max_tokens=` keywords override the instance's `session` (the budget scope charged), `model`
    (a candidate every call is pinned to) and `max_tokens` (the output cap); `structured_output=True` (set by
    `structured_predict`, `astructured_predict`, their stream forms and `as_structured_llm`)
    routes only to candidates with `supports_structured_output`. Each candidate is called with the
    output cap its reservation assumed (its own `max_tokens` / `metadata.num_output` lowers it;
    its `metadata.context_window` bounds prompt + output), and streams from OpenAI-family clients
    ask for the provider's usage. The routing record and costs are in
    `response.additional_kwargs["omniroute"]` (`usage_source` says whether the figures are the
    provider's or OmniRoute's own count), the exact usage charged in `additional_kwargs`
    (`prompt_tokens`, `completion_tokens`, `total_tokens`); `response.raw` stays the provider's
    own response object (a dict `raw` gets the usage merged into `raw["usage"]`). Streams end
    with one extra chunk (empty delta) carrying them. Each settled call also emits a
    `RoutedCallEndEvent` to LlamaIndex instrumentation (see `SpendTracker`). The async forms make
    the same routing and ledger calls in worker threads (`shared_core.offload`), so neither
    a decision nor a ledger round trip holds the event loop; events are dispatched on the loop.

    Callbacks: a call's LLM events go to this instance's `callback_manager` (LlamaIndex's
    `Settings.llm` sets it), once: when it has handlers, the chosen candidate is called through a
    per-call copy that carries it, so instances and `for_session` copies sharing candidates never
    hear each other's calls. The candidates' own `callback_manager` is never changed; it hears
    routed calls only while this instance has no handlers of its own.

    Copies and pickles: `for_session`, `copy.copy` and `copy.deepcopy` share the router, its
    ledger and candidates (a deep copy also keeps the callback manager): a copy charges the same
    budgets. Pickling never changes the live object. The router pickles as its identity plus a
    recipe to rebuild it (candidates with their LLMs, fitted predictors, settings, and how to
    reopen its ledger): unpickled in the same process it is the same live router; in another
    process (an `IngestionPipeline(..., num_workers=n)` worker) it is rebuilt once per process
    and reopens the same ledger when that is a `sqlite://` file or a `redis://` server, so
    budgets hold across processes. A `memory://` ledger lives only in the process that made it:
    there the unpickled copy's calls raise `LedgerNotShared` saying so (give it a sqlite:// or
    redis:// store, or build the LLM in each worker) rather than spend outside its budget.
    Unpickling itself never fails, since a `multiprocessing.Pool` worker that cannot unpickle its
    task hangs the pool.
    """

    router: Router = Field(exclude=True, description="The shared core router and its ledger.")
    session: str | None = Field(None, description="Budget scope charged when a call names none.")
    model: str | None = Field(None, description="Candidate every call is pinned to; None lets the router choose.")
    max_tokens: int | None = Field(None, gt=0, description="Output cap when a call names none (as ChatOmniRoute's).")

    def __init__(
        self,
        candidates: Sequence[Candidate] | None = None,
        *,
        router: Router | None = None,
        budget: Budget | None = None,
        store: LedgerStore | str | None = None,
        scope_prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        if (candidates is None) == (router is None):
            raise ValueError("give exactly one of candidates= (a Router is built over them) or router=")
        unknown = sorted(set(kwargs) - set(type(self).model_fields))
        if unknown:
            # A misspelt setting (budjet=, stroe=) must fail loudly, not leave calls unbudgeted.
            raise TypeError(f"OmniRouteLLM got unexpected keyword arguments {unknown}")
        if router is None:
            router = Router(candidates, default_budget=budget, store=store, scope_prefix=scope_prefix)
        elif budget is not None and budget != router.default_budget:
            raise ValueError("budget= differs from the given router's default_budget: set it on the Router")
        elif store is not None or scope_prefix is not None:
            raise ValueError("store= and scope_prefix= apply to the router OmniRouteLLM builds; set them on the Router")
        _check_models(router.candidates)
        for candidate in router.candidates:
            limited = with_declared_limits(candidate)
            if limited is not candidate:
                router.update_candidate(limited)
        _check_tools(router.candidates)
        if "callback_manager" in kwargs and kwargs["callback_manager"] is None:
            del kwargs["callback_manager"]  # None means "no handlers of its own": LlamaIndex's default
        super().__init__(router=router, **kwargs)
        if self.model is not None:
            router.candidate(self.model)

    # ------------------------------------------------------------------ copies and pickles
    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> OmniRouteLLM:
        """A copy sharing the router (ledger, candidates, locks) and the callback manager."""
        memo = {} if memo is None else memo
        share_router(self.router, memo)
        memo.setdefault(id(self.callback_manager), self.callback_manager)
        return super().__deepcopy__(memo)

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state, built beside the live object (LlamaIndex's BaseComponent deletes
        unpicklable attributes from the live `__dict__`; this never touches it)."""
        state = BaseModel.__getstate__(self)
        fields: dict[str, Any] = {}
        for name, value in state["__dict__"].items():
            if name == "router":
                fields[name] = RouterRef(value)
                continue
            try:
                pickle.dumps(value)
            except Exception as error:  # noqa: BLE001 - the copy gets the field's default instead
                logger.warning("OmniRouteLLM: %s cannot be pickled (%s); the unpickled copy gets its default",
                               name, error)
                continue
            fields[name] = value
        return {**state, "__dict__": fields}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled OmniRouteLLM (fields that could not be pickled get their defaults)."""
        fields = dict(state["__dict__"])
        for name, info in type(self).model_fields.items():
            if name not in fields and not info.is_required():
                fields[name] = info.get_default(call_default_factory=True)
        BaseModel.__setstate__(self, {**state, "__dict__": fields})

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialisation name."""
        return "OmniRouteLLM"

    def for_session(self, session: str) -> OmniRouteLLM:
        """The same router (and ledger) charging `session`, e.g. one agent's own budget."""
        return self.model_copy(update={"session": session})

    @property
    def metadata(self) -> LLMMetadata:
        """What the router can promise whichever candidate it picks.

        Context window and output size are the smallest among the reachable candidates, so a
        prompt LlamaIndex packs to fit leaves every candidate feasible. Function calling is on when
        any candidate can call tools: requests with tools go only to those. It is a chat model so
        that LlamaIndex hands it messages, which each candidate formats its own way.
        """
        reachable = list(self.router.candidates) if self.model is None else [self.router.candidate(self.model)]
        return LLMMetadata(
            context_window=min(c.context_window for c in reachable),
            num_output=min(c.max_output_tokens for c in reachable),
            is_chat_model=True,
            is_function_calling_model=any(c.supports_tools for c in reachable),
            model_name=self.model or "omniroute",
        )

    # ------------------------------------------------------------------ routing
    def _decide(self, request: list[dict[str, Any]], kwargs: dict[str, Any], tools: list | None = None) -> Decision:
        return self.router.decide(**self._arguments(request, kwargs, tools))

    def _arguments(
        self, request: list[dict[str, Any]], kwargs: dict[str, Any], tools: list | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of the call's `Router.decide` (taking the routing ones out of `kwargs`)."""
        session = kwargs.pop("session", self.session)
        model = kwargs.pop("model", self.model)
        max_tokens = kwargs.pop("max_tokens", self.max_tokens)
        structured = bool(kwargs.pop(_STRUCTURED, False))
        claim(self.router, model)  # a selection held for this engine's call gives way to it
        return dict(request=request, session=session, tools=tools, structured_output=structured, model=model,
                    max_tokens=max_tokens)

    def _target(
        self, candidate: Candidate, decision: Decision, *, streaming: bool = False
    ) -> tuple[LLM, dict[str, Any]]:
        """The candidate's LLM as one call should use it, and the keywords it needs: the output cap
        the ledger reserved (the cap reserved is the cap sent), this instance's callback manager
        when it has handlers (on a per-call copy, never on the shared candidate) and, for a
        stream, a request for its usage."""
        callbacks = self.callback_manager if self.callback_manager.handlers else None
        llm, extra = capped(candidate.model, decision.output_caps.get(candidate.name), callbacks)
        return llm, {**extra, **(stream_usage_kwargs(llm) if streaming else {})}

    def _plan(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[Decision, Callable[[Any], dict[str, Any]]]:
        """The decision for a chat call and, per candidate, the arguments of its own chat call."""
        arguments, decide = self._chat_request(messages, kwargs)
        return self.router.decide(**decide), arguments

    def _chat_request(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[Callable[[Any], dict[str, Any]], dict[str, Any]]:
        """Per candidate, the arguments of its own chat call; and those of the call's `Router.decide`."""
        prepared: _PreparedTools | None = kwargs.pop(_PREPARED, None)
        if prepared is not None:
            return prepared.arguments, self._arguments(
                prepared.request, dict(prepared.routing), tools=tool_schemas(prepared.tools)
            )
        return (lambda llm: {"messages": messages, **kwargs}), self._arguments(to_request(messages), kwargs)

    def _settled(self, response: Response, decision: Decision) -> Response:
        settlement = settle_usage(self.router, decision, provider_usage(response), output_text(response))
        return _report(decision, settlement, annotate(response, decision, settlement))

    # The async paths make the same calls in routing's worker threads (shared_core.offload):
    # a `claim` or `hold` made there is kept in the caller's context, and events go out on the loop.
    async def _aplan(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]
    ) -> tuple[Decision, Callable[[Any], dict[str, Any]]]:
        arguments, decision = await decide_off_loop(
            self.router, partial(self._chat_request, messages, kwargs), lambda plan: self.router.release(plan[1])
        )
        return decision, arguments

    async def _adecide(self, request: list[dict[str, Any]], kwargs: dict[str, Any]) -> Decision:
        def prepare() -> tuple[None, dict[str, Any]]:
            return None, self._arguments(request, kwargs)

        _, decision = await decide_off_loop(self.router, prepare, lambda plan: self.router.release(plan[1]))
        return decision

    async def _asettled(self, response: Response, decision: Decision) -> Response:
        settlement = await asettle_usage(self.router, decision, provider_usage(response), output_text(response))
        return _report(decision, settlement, annotate(response, decision, settlement))

    # ------------------------------------------------------------------ chat
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat with the candidate the router picks (falling back on errors), then settle its cost."""
        messages = chat_messages(messages, "chat")
        decision, arguments = self._plan(messages, kwargs)
        def run(candidate: Candidate, decision: Decision) -> ChatResponse:
            llm, extra = self._target(candidate, decision)
            return llm.chat(**{**arguments(candidate.model), **extra})

        response, decision = call_with_fallbacks(self.router, decision, run, on_failure=_failed)
        return self._settled(response, decision)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """The async form of chat (the same core decide / settle calls, made off the event loop)."""
        messages = chat_messages(messages, "achat")
        decision, arguments = await self._aplan(messages, kwargs)
        async def run(candidate: Candidate, decision: Decision) -> ChatResponse:
            llm, extra = self._target(candidate, decision)
            return await llm.achat(**{**arguments(candidate.model), **extra})

        response, decision = await acall_with_fallbacks(self.router, decision, run, on_failure=_failed)
        return await self._asettled(response, decision)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream from the routed candidate; the decision is made when iteration starts."""
        messages = chat_messages(messages, "stream_chat")

        def chunks() -> Iterator[ChatResponse]:
            decision, arguments = self._plan(messages, kwargs)

            def start(candidate: Candidate, decision: Decision) -> ChatResponseGen:
                llm, extra = self._target(candidate, decision, streaming=True)
                return llm.stream_chat(**{**arguments(candidate.model), **extra})

            yield from self._settling(FallbackStream(self.router, decision, start, on_failure=_failed))

        return chunks()

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """The async form of stream_chat."""
        messages = chat_messages(messages, "astream_chat")

        async def chunks() -> AsyncIterator[ChatResponse]:
            decision, arguments = await self._aplan(messages, kwargs)

            async def start(candidate: Candidate, decision: Decision) -> AsyncIterator[ChatResponse]:
                llm, extra = self._target(candidate, decision, streaming=True)
                async for chunk in await llm.astream_chat(**{**arguments(candidate.model), **extra}):
                    yield chunk

            async with aclosing(
                self._asettling(FallbackStream(self.router, decision, start, on_failure=_failed))
            ) as settled:
                async for chunk in settled:  # aclose() on this generator settles at once, not when collected
                    yield chunk

        return chunks()

    # ------------------------------------------------------------------ completion
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete with the candidate the router picks, then settle its cost."""
        prompt = prompt_text(prompt, "complete")
        decision = self._decide([{"role": "user", "content": prompt}], kwargs)

        def run(candidate: Candidate, decision: Decision) -> CompletionResponse:
            llm, extra = self._target(candidate, decision)
            return llm.complete(prompt, formatted=formatted, **{**kwargs, **extra})

        response, decision = call_with_fallbacks(self.router, decision, run, on_failure=_failed)
        return self._settled(response, decision)

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The async form of complete (routing and settling off the event loop)."""
        prompt = prompt_text(prompt, "acomplete")
        decision = await self._adecide([{"role": "user", "content": prompt}], kwargs)

        async def run(candidate: Candidate, decision: Decision) -> CompletionResponse:
            llm, extra = self._target(candidate, decision)
            return await llm.acomplete(prompt, formatted=formatted, **{**kwargs, **extra})

        response, decision = await acall_with_fallbacks(self.router, decision, run, on_failure=_failed)
        return await self._asettled(response, decision)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream a completion from the routed candidate."""
        prompt = prompt_text(prompt, "stream_complete")

        def chunks() -> Iterator[CompletionResponse]:
            decision = self._decide([{"role": "user", "content": prompt}], kwargs)

            def start(candidate: Candidate, decision: Decision) -> CompletionResponseGen:
                llm, extra = self._target(candidate, decision, streaming=True)
                return llm.stream_complete(prompt, formatted=formatted, **{**kwargs, **extra})

            yield from self._settling(FallbackStream(self.router, decision, start, on_failure=_failed))

        return chunks()

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """The async form of stream_complete."""
        prompt = prompt_text(prompt, "astream_complete")

        async def chunks() -> AsyncIterator[CompletionResponse]:
            decision = await self._adecide([{"role": "user", "content": prompt}], kwargs)

            async def start(candidate: Candidate, decision: Decision) -> AsyncIterator[CompletionResponse]:
                llm, extra = self._target(candidate, decision, streaming=True)
                async for chunk in await llm.astream_complete(prompt, formatted=formatted, **{**kwargs, **extra}):
                    yield chunk

            async with aclosing(
                self._asettling(FallbackStream(self.router, decision, start, on_failure=_failed))
            ) as settled:
                async for chunk in settled:  # aclose() on this generator settles at once, not when collected
                    yield chunk

        return chunks()

    # ------------------------------------------------------------------ streams
    def _settling(self, stream: FallbackStream) -> Iterator[AnyResponse]:
        books = _StreamRelay(self.router, stream)
        with closing(iter(stream)) as chunks:
            try:
                for chunk in chunks:
                    yield books.passing(chunk)
            except BaseException as error:
                books.interrupted(error)
                raise
        final = books.finished()
        if final is not None:
            yield final

    async def _asettling(self, stream: FallbackStream) -> AsyncIterator[AnyResponse]:
        books = _StreamRelay(self.router, stream)
        # Closed explicitly: an async generator left to the event loop is finalised later, and
        # its reservation would be held until then.
        async with aclosing(stream.__aiter__()) as chunks:
            try:
                async for chunk in chunks:
                    yield books.passing(chunk)
            except BaseException as error:
                await books.ainterrupted(error)
                raise
        final = await books.afinished()
        if final is not None:
            yield final

    # ------------------------------------------------------------------ structured output
    def structured_predict(
        self, output_cls: type[BaseModel], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """LlamaIndex's structured_predict, routed only to candidates that support structured output."""
        return super().structured_predict(output_cls, prompt, _structured(llm_kwargs), **prompt_args)

    async def astructured_predict(
        self, output_cls: type[BaseModel], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """The async form of structured_predict."""
        return await super().astructured_predict(output_cls, prompt, _structured(llm_kwargs), **prompt_args)

    def _structured_stream_call(
        self, output_cls: type[BaseModel], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """stream_structured_predict's program call, routed as structured output."""
        return super()._structured_stream_call(output_cls, prompt, _structured(llm_kwargs), **prompt_args)

    async def _structured_astream_call(
        self, output_cls: type[BaseModel], prompt: PromptTemplate, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:
        """astream_structured_predict's program call, routed as structured output."""
        return await super()._structured_astream_call(output_cls, prompt, _structured(llm_kwargs), **prompt_args)

    # ------------------------------------------------------------------ tools
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Prepare a tool call; the chat call routes it to a tool-capable candidate, which formats the tools."""
        messages = chat_messages(chat_history or [], name="chat_history")
        if user_msg is not None and not isinstance(user_msg, (str, ChatMessage)):
            raise TypeError(f"user_msg must be a str or a ChatMessage, got {type(user_msg).__name__}")
        if user_msg is not None:
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str)
                            else user_msg)
        if not tools:  # a plain chat: any candidate may answer it, decided when chat runs
            return {"messages": messages, **kwargs}
        routing = {key: kwargs.pop(key) for key in _ROUTING if key in kwargs}
        options = {
            "user_msg": user_msg, "chat_history": chat_history, "verbose": verbose,
            "allow_parallel_tool_calls": allow_parallel_tool_calls, "tool_required": tool_required, **kwargs,
        }
        return {"messages": messages, _PREPARED: _PreparedTools(to_request(messages), routing, tools, options)}

    def _answering(self, response: ChatResponse) -> FunctionCallingLLM | None:
        """The function-calling candidate that produced `response`; None when no such one did."""
        name = routed_model(response)
        llm = None if name is None else self.router.candidate(name).model
        return llm if isinstance(llm, FunctionCallingLLM) else None

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[BaseTool], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        """The answering candidate's own validation (e.g. trimming parallel tool calls)."""
        llm = self._answering(response)
        if llm is None:
            return response
        return llm._validate_chat_with_tools_response(
            response, tools, allow_parallel_tool_calls=allow_parallel_tool_calls, **kwargs
        )

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """Tool calls read by the candidate that answered, which knows its own format."""
        llm = self._answering(response)
        if llm is None:
            if error_on_no_tool_call:
                raise ValueError("no function-calling candidate produced this response, so it has no tool calls")
            return []
        return llm.get_tool_calls_from_response(
            response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
        )
