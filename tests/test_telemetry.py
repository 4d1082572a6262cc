"""OpenTelemetry spans of routed calls, read from the SDK's in-memory exporter: real provider clients
(langchain-openai, langchain-anthropic, llama-index-llms-openai) against tests/provider_server.py, and
a fake client that opens spans of its own to show they nest under the routed call's."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai import OpenAI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from omniroute_lc import ChatOmniRoute
from omniroute_li import OmniRouteLLM
from shared_core import Budget, Candidate, telemetry
from shared_core.fallbacks import AllCandidatesFailed

GPT, CLAUDE = "gpt-4o-mini", "claude-3-5-haiku-latest"
PRICES = {GPT: dict(input_price=0.15, output_price=0.6), CLAUDE: dict(input_price=0.8, output_price=4.0)}
EXACT = 1e-9  # USD


@pytest.fixture
def spans(monkeypatch) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider, the global one for this test only, exporting to memory.

    The API lets a process set its global provider once (trace.set_tracer_provider), so the test
    swaps the global itself, as OpenTelemetry's own test utilities do, and the next test sees none.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
def billing(provider):
    for model, prices in PRICES.items():
        provider.configure(model, **prices)
    return provider


def lc_candidates(provider) -> list[Candidate]:
    gpt = ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=10)
    claude = ChatAnthropic(base_url=provider.anthropic_url, api_key="test", model=CLAUDE, max_retries=0, timeout=10)
    return [Candidate(name="gpt", model=gpt, prior_quality=0.8, **PRICES[GPT]),
            Candidate(name="claude", model=claude, prior_quality=0.7, **PRICES[CLAUDE])]


def routed(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """OmniRoute's spans (not the provider clients')."""
    return [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "omniroute"]


def assert_describes(span: ReadableSpan, record: dict[str, Any], bill: Any, *, scope: str, tried: list[str]) -> None:
    """The span says what the response's routing record and the provider's bill say."""
    a = span.attributes
    assert span.kind == SpanKind.CLIENT and span.status.status_code == StatusCode.UNSET
    assert span.name == f"chat {tried[0]}" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == tried[0] and a["gen_ai.response.model"] == record["model"] == tried[-1]
    assert a["gen_ai.usage.input_tokens"] == record["input_tokens"] == bill.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == record["output_tokens"] == bill.completion_tokens
    assert a["omniroute.cost.actual_usd"] == record["actual_cost_usd"] == pytest.approx(bill.cost_usd, abs=EXACT)
    assert a["omniroute.cost.estimated_usd"] == record["estimated_cost_usd"]
    assert a["omniroute.reserved_usd"] == record["reserved_usd"] > 0
    assert a["omniroute.lambda"] == record["lambda"]
    assert a["omniroute.scope"] == scope and a["omniroute.decision_id"]
    assert list(a["omniroute.candidates_tried"]) == tried
    assert a["omniroute.usage_source"] == "provider" and a["gen_ai.request.max_tokens"] == record["max_output_tokens"]


async def lc_call(chat: ChatOmniRoute, form: str, **kwargs: Any) -> AIMessage:
    if form == "invoke":
        return chat.invoke("Hello.", **kwargs)
    if form == "ainvoke":
        return await chat.ainvoke("Hello.", **kwargs)
    if form == "stream":
        return list(chat.stream("Hello.", **kwargs))[-1]
    return [c async for c in chat.astream("Hello.", **kwargs)][-1]


FORMS = ["invoke", "ainvoke", "stream", "astream"]


@pytest.mark.parametrize("form", FORMS)
async def test_one_span_per_langchain_call_says_what_the_ledger_charged(spans, billing, form):
    chat = ChatOmniRoute(candidates=lc_candidates(billing), budget=Budget(usd=1.0), session="run")
    reply = await lc_call(chat, form, model="gpt")
    (span,) = routed(spans)
    record = reply.response_metadata["omniroute"]
    (bill,) = billing.requests
    assert_describes(span, record, bill, scope="run", tried=["gpt"])
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.attributes["omniroute.stream"] is form.endswith("stream")
    assert span.attributes["omniroute.cost.actual_usd"] == pytest.approx(
        chat.router.budget_state("run").committed, abs=EXACT)
    assert span.attributes["omniroute.remaining_usd"] == record["remaining_usd"]
    assert not span.events


def test_prompt_cache_reads_are_reported(spans, billing):
    billing.configure(GPT, cache_read_tokens=8, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=lc_candidates(billing), budget=Budget(usd=1.0))
    chat.invoke("Hello.", model="gpt")
    (span,) = routed(spans)
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == billing.requests[0].cache_read_tokens == 8
    assert span.attributes["omniroute.cost.actual_usd"] == pytest.approx(billing.bill_usd, abs=EXACT)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("status", [500, 429])
async def test_a_fallback_is_one_span_with_the_failed_attempt_as_an_event(spans, billing, form, status):
    billing.configure(GPT, fail_status=status, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=lc_candidates(billing), budget=Budget(usd=1.0))
    reply = await lc_call(chat, form)
    (span,) = routed(spans)
    record = reply.response_metadata["omniroute"]
    assert [b.status for b in billing.requests] == [status, 200]
    assert_describes(span, record, billing.requests[1], scope="default", tried=["gpt", "claude"])
    assert span.attributes["gen_ai.provider.name"] == "anthropic"  # who answered
    (event,) = span.events
    assert event.name == "omniroute.attempt.failed"
    assert event.attributes["gen_ai.request.model"] == "gpt" and event.attributes["omniroute.attempt"] == 0
    assert event.attributes["omniroute.error.kind"] == "transient"
    expected = (
        ("InternalServerError", "OpenAIAPIError") if status == 500 else ("RateLimitError", "OpenAIRateLimitError")
    )
    assert event.attributes["error.type"] in expected  # langchain-openai may re-classify the SDK's error
    # The anthropic SDK traces its own API call: it nests under the routed call's span.
    (client,) = [s for s in spans.get_finished_spans() if s.instrumentation_scope.name != "omniroute"]
    assert client.parent.span_id == span.context.span_id and client.context.trace_id == span.context.trace_id


@pytest.mark.parametrize("form", ["ainvoke", "stream"])
async def test_when_every_candidate_fails_the_span_is_an_error(spans, billing, form):
    billing.configure(GPT, fail_status=503)
    billing.configure(CLAUDE, fail_status=529)
    chat = ChatOmniRoute(candidates=lc_candidates(billing), budget=Budget(usd=1.0))
    with pytest.raises(AllCandidatesFailed):
        await lc_call(chat, form)
    (span,) = routed(spans)
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "AllCandidatesFailed"
    assert list(span.attributes["omniroute.candidates_tried"]) == ["gpt", "claude"]
    assert [e.attributes["gen_ai.request.model"] for e in span.events] == ["gpt", "claude"]
    assert "gen_ai.response.model" not in span.attributes and "omniroute.cost.actual_usd" not in span.attributes
    assert chat.router.budget_state("default").reserved == 0


def test_a_stream_closed_early_ends_its_span_with_the_worst_case_charged(spans, billing):
    billing.configure(GPT, answer_tokens=400, chunk_tokens=1, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=lc_candidates(billing), budget=Budget(usd=1.0))
    stream = chat.stream("Hello.", model="gpt")
    next(stream)
    assert not routed(spans)  # still streaming
    stream.close()
    (span,) = routed(spans)
    assert span.attributes["omniroute.interrupted_by"] == "GeneratorExit"
    assert span.attributes["omniroute.usage_source"] == "reserved"
    assert span.status.status_code == StatusCode.UNSET  # the reader stopped; nothing failed
    assert span.attributes["omniroute.cost.actual_usd"] == pytest.approx(
        chat.router.budget_state("default").committed, abs=EXACT)


async def test_llamaindex_calls_have_the_same_spans(spans, billing):
    billing.configure(GPT, fail_status=429, fail_times=1, **PRICES[GPT])
    llm = OmniRouteLLM([
        Candidate(name="gpt", model=OpenAI(api_base=billing.openai_url, api_key="test", model=GPT, max_retries=0,
                                           timeout=10), prior_quality=0.8, **PRICES[GPT]),
        Candidate(name="gpt-again", model=OpenAI(api_base=billing.openai_url, api_key="test", model=GPT,
                                                 max_retries=0, timeout=10), prior_quality=0.7, **PRICES[GPT]),
    ], budget=Budget(usd=1.0), session="li")
    messages = [ChatMessage(role="user", content="Hello.")]
    records = [llm.chat(messages).additional_kwargs["omniroute"],  # 429, then gpt-again answers
               (await llm.achat(messages)).additional_kwargs["omniroute"],
               list(llm.stream_chat(messages))[-1].additional_kwargs["omniroute"],
               [c async for c in await llm.astream_complete("Go on.")][-1].additional_kwargs["omniroute"]]
    found = routed(spans)
    assert len(found) == 4 and [s.attributes["omniroute.stream"] for s in found] == [False, False, True, True]
    answered = [b for b in billing.requests if b.status == 200]
    tried = [["gpt", "gpt-again"], ["gpt"], ["gpt"], ["gpt"]]
    for span, record, bill, names in zip(found, records, answered, tried, strict=False):
        assert_describes(span, record, bill, scope="li", tried=names)
    assert [e.attributes["error.type"] for e in found[0].events] == ["RateLimitError"]
    assert sum(s.attributes["omniroute.cost.actual_usd"] for s in found) == pytest.approx(
        llm.router.budget_state("li").committed, abs=EXACT)


# ---------------------------------------------------------------- a client with spans of its own


class TracedClientModel(BaseChatModel):
    """A candidate whose client opens a span per request and per chunk read, as instrumented clients do."""

    fail_after_first_chunk: bool = False

    @property
    def _llm_type(self) -> str:
        return "traced-fake"

    @staticmethod
    def _client_work(name: str) -> None:
        with trace.get_tracer("fake-client").start_as_current_span(name):
            pass

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self._client_work("request")
        usage = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
        return ChatResult(generations=[ChatGeneration(message=AIMessage("hi there", usage_metadata=usage))])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        self._client_work("request")
        yield ChatGenerationChunk(message=AIMessageChunk(content="hi"))
        self._client_work("read")
        if self.fail_after_first_chunk:
            raise ConnectionError("the connection dropped")
        yield ChatGenerationChunk(message=AIMessageChunk(content=" there"))

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages, stop, None, **kwargs):
            yield chunk


def traced_chat(**model: Any) -> ChatOmniRoute:
    return ChatOmniRoute(candidates=[Candidate(name="fake", model=TracedClientModel(**model), input_price=1,
                                               output_price=2, prior_quality=0.5)], budget=Budget(usd=1.0))


@pytest.mark.parametrize("form", FORMS)
async def test_the_routed_span_is_current_while_the_client_works(spans, form):
    await lc_call(traced_chat(), form)
    (span,) = routed(spans)
    client = [s for s in spans.get_finished_spans() if s.instrumentation_scope.name == "fake-client"]
    assert [s.name for s in client] == (["request"] if "invoke" in form else ["request", "read"])
    assert all(s.parent.span_id == span.context.span_id for s in client)


@pytest.mark.parametrize("form", ["stream", "astream"])
async def test_a_stream_broken_by_its_provider_after_the_first_chunk_is_an_error(spans, form):
    chat = traced_chat(fail_after_first_chunk=True)
    with pytest.raises(ConnectionError):
        await lc_call(chat, form)
    (span,) = routed(spans)
    assert span.status.status_code == StatusCode.ERROR and span.attributes["error.type"] == "ConnectionError"
    assert span.attributes["omniroute.interrupted_by"] == "ConnectionError"
    assert span.attributes["gen_ai.response.model"] == "fake"
    assert span.attributes["omniroute.cost.actual_usd"] == chat.router.budget_state("default").committed > 0


# ---------------------------------------------------------------- without tracing


@pytest.mark.parametrize("form", FORMS)
async def test_without_a_tracer_provider_calls_go_untraced(monkeypatch, form):
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # nothing configured: the API's no-op tracer
    chat = traced_chat()
    reply = await lc_call(chat, form)
    assert reply.response_metadata["omniroute"]["actual_cost_usd"] > 0
    decision = chat.router.decide("Hello.")
    assert telemetry.start(chat.router, decision) is decision
    chat.router.release(decision)


def test_without_opentelemetry_installed_calls_go_untraced(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` raises ImportError
    monkeypatch.setattr(telemetry, "_api", telemetry._UNLOADED)
    chat = traced_chat()
    assert chat.invoke("Hello.").response_metadata["omniroute"]["actual_cost_usd"] > 0
    assert list(chat.stream("Hello."))[-1].response_metadata["omniroute"]["actual_cost_usd"] > 0
    assert telemetry._api is None


class BrokenTracerProvider(TracerProvider):
    """A provider whose tracer for OmniRoute cannot be made."""

    def get_tracer(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == telemetry.TRACER_NAME:
            raise RuntimeError("exporter misconfigured")
        return super().get_tracer(name, *args, **kwargs)


def test_a_telemetry_failure_is_logged_once_and_the_call_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", BrokenTracerProvider())
    monkeypatch.setattr(telemetry, "_warned", False)
    chat = traced_chat()
    with caplog.at_level(logging.DEBUG, logger="omniroute"):
        for _ in range(2):
            assert chat.invoke("Hello.").response_metadata["omniroute"]["actual_cost_usd"] > 0
    failures = [r for r in caplog.records if "OpenTelemetry" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG]
    assert "exporter misconfigured" in caplog.text
