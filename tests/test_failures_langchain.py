"""Failures you can see, through real LangChain clients against the local provider: which errors fall
back, what is logged, what callback handlers receive, deadlines, strict construction, LangChain habits."""

from __future__ import annotations

import logging
import time
from typing import Any

import anthropic
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
from langchain_openai import ChatOpenAI
from lc_fakes import FailingChatModel
from pydantic import BaseModel, ValidationError

from omniroute_lc import ChatOmniRoute, SpendTracker
from omniroute_lc.events import FALLBACK_EVENT
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget, Candidate, Router
from shared_core.calls import AttemptTimeout
from shared_core.fallbacks import AllCandidatesFailed

GPT, CLAUDE = "gpt-4o-mini", "claude-3-5-haiku-latest"


def gpt(provider, **kwargs) -> Candidate:
    model = ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=10, **kwargs)
    return Candidate(name="gpt", model=model, input_price=0.15, output_price=0.6, prior_quality=0.8)


def claude(provider, **kwargs) -> Candidate:
    model = ChatAnthropic(base_url=provider.anthropic_url, api_key="test", model=CLAUDE, max_retries=0, timeout=10,
                          **kwargs)
    return Candidate(name="claude", model=model, input_price=0.8, output_price=4.0, prior_quality=0.7)


class Events(BaseCallbackHandler):
    """Records the custom events and errors a LangChain callback handler sees."""

    def __init__(self) -> None:
        self.custom: list[tuple[str, dict]] = []
        self.errors: list[BaseException] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.custom.append((name, data))

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


@pytest.mark.parametrize("form", ["invoke", "ainvoke", "stream", "astream"])
async def test_a_server_error_falls_back_visibly(provider, caplog, form):
    provider.configure(GPT, fail_status=500)
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    events = Events()
    config = {"callbacks": [events]}
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        if form == "invoke":
            reply = chat.invoke("Hello.", config=config)
        elif form == "ainvoke":
            reply = await chat.ainvoke("Hello.", config=config)
        elif form == "stream":
            reply = list(chat.stream("Hello.", config=config))[-1]
        else:
            reply = [c async for c in chat.astream("Hello.", config=config)][-1]
    record = reply.response_metadata["omniroute"]
    assert record["model"] == "claude" and record["failed"] == ["gpt"]
    (failure,) = record["failures"]
    assert (failure["model"], failure["kind"]) == ("gpt", "transient") and "500" in failure["message"]
    assert failure["error"] in ("InternalServerError", "OpenAIAPIError")  # langchain-openai may re-classify
    assert [name for name, _ in events.custom] == [FALLBACK_EVENT]
    assert events.custom[0][1]["model"] == "gpt" and events.custom[0][1]["kind"] == "transient"
    assert "candidate gpt failed (transient: " in caplog.text and "falling back to claude" in caplog.text
    assert [r.status for r in provider.requests] == [500, 200]
    assert chat.router.budget_state("default").reserved == 0


def test_a_bad_request_is_raised_at_once_without_trying_the_next(provider, caplog):
    provider.configure(GPT, fail_status=400)
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    with caplog.at_level(logging.WARNING, logger="omniroute"), pytest.raises(openai.BadRequestError):
        chat.invoke("Hello.")
    assert len(provider.requests) == 1  # claude was never asked: it would reject the same request
    assert "not falling back" in caplog.text
    assert chat.router.budget_state("default").reserved == 0


def test_a_programming_error_is_raised_at_once():
    broken = FailingChatModel(error=TypeError("unexpected keyword argument 'temprature'"))
    fine = FailingChatModel(error=RuntimeError("never reached"))
    chat = ChatOmniRoute(candidates=[
        Candidate(name="broken", model=broken, input_price=1, output_price=1, prior_quality=0.9),
        Candidate(name="fine", model=fine, input_price=1, output_price=1, prior_quality=0.5),
    ])
    with pytest.raises(TypeError, match="temprature"):
        chat.invoke("Hello.")
    assert fine.calls == 0


def test_a_misconfigured_candidate_falls_back_and_is_reported_loudly_every_time(provider, caplog):
    provider.configure(GPT, fail_status=401)
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        for _ in range(2):
            assert chat.invoke("Hello.").response_metadata["omniroute"]["model"] == "claude"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("candidate gpt failed (misconfigured: " in r.getMessage() for r in errors)


async def test_when_every_candidate_fails_one_error_names_each(provider):
    provider.configure(GPT, fail_status=503)
    provider.configure(CLAUDE, fail_status=529)
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    with pytest.raises(AllCandidatesFailed) as failed:
        await chat.ainvoke("Hello.")
    assert [a.candidate for a in failed.value.attempts] == ["gpt", "claude"]
    assert isinstance(failed.value.errors[0], openai.InternalServerError)
    assert isinstance(failed.value.errors[1], anthropic.APIStatusError)
    assert "(gpt: transient " in str(failed.value) and "; claude: transient " in str(failed.value)
    assert failed.value.__cause__ is failed.value.errors[1]
    assert chat.router.budget_state("default").reserved == 0


@pytest.mark.parametrize("form", ["invoke", "ainvoke", "stream", "astream"])
async def test_a_hung_candidate_is_given_up_on_after_the_timeout(provider, form):
    provider.configure(GPT, hang_s=3.0)
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0), timeout=0.3)
    start = time.monotonic()
    if form == "invoke":
        reply = chat.invoke("Hello.")
    elif form == "ainvoke":
        reply = await chat.ainvoke("Hello.")
    elif form == "stream":
        reply = list(chat.stream("Hello."))[-1]
    else:
        reply = [c async for c in chat.astream("Hello.")][-1]
    assert time.monotonic() - start < 2.0
    record = reply.response_metadata["omniroute"]
    assert record["model"] == "claude"
    assert record["failures"][0]["error"] == "AttemptTimeout" and record["failures"][0]["kind"] == "transient"


def test_the_deadline_bounds_all_attempts_together(provider):
    provider.configure(GPT, hang_s=3.0)
    provider.configure(CLAUDE, hang_s=3.0)
    router = Router([gpt(provider), claude(provider)], attempt_timeout_s=0.4, deadline_s=0.6)
    chat = ChatOmniRoute(router=router, candidates=[gpt(provider), claude(provider)])
    start = time.monotonic()
    with pytest.raises(AllCandidatesFailed) as failed:
        chat.invoke("Hello.")
    assert time.monotonic() - start < 1.5
    assert all(isinstance(e, AttemptTimeout) for e in failed.value.errors)


def test_a_misspelt_setting_is_refused():
    with pytest.raises(ValidationError, match="budjet"):
        ChatOmniRoute(candidates=[Candidate(name="a", model=FakeToolChatModel(), input_price=1,
                                            output_price=1, prior_quality=0.5)], budjet=Budget(usd=1.0))
    chat = ChatOmniRoute(candidates=[Candidate(name="a", model=FakeToolChatModel(), input_price=1, output_price=1,
                                               prior_quality=0.5)])
    with pytest.raises(ValueError, match="timeout= differs"):
        ChatOmniRoute(router=chat.router, timeout=5)


def test_tokens_are_counted_by_the_core_counter(provider):
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)])
    history = [SystemMessage("You are terse."), HumanMessage("What is 2 + 2?"), AIMessage("4"),
               HumanMessage("And 3 + 3?")]
    counted = chat.get_num_tokens_from_messages(history)
    assert chat.get_num_tokens("hello world") == 2
    trimmed = trim_messages(history, max_tokens=counted - 1, token_counter=chat, strategy="last")
    assert 0 < len(trimmed) < len(history)
    # What the router counts is what the provider bills for the same messages.
    chat.invoke(history, model="gpt")
    assert provider.requests[-1].prompt_tokens == counted


class Answer(BaseModel):
    """A short answer."""

    answer: str


def test_structured_output_keeps_the_session_and_forwards_strict(provider):
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    result = chat.with_structured_output(Answer, include_raw=True, strict=True).invoke(
        "Answer briefly.", session="acme/agent-7", model="gpt")
    assert isinstance(result["parsed"], Answer)
    assert result["raw"].response_metadata["omniroute"]["session"] == "acme/agent-7"
    assert chat.router.budget_state("acme/agent-7").requests == 1
    assert chat.router.budget_state("default") is None
    assert provider.requests[-1].body["tools"][0]["function"]["strict"] is True
    # Anthropic's bind_tools takes strict too; a candidate without it is simply not sent it.
    chat.with_structured_output(Answer, strict=True).invoke("Answer briefly.", model="claude")
    assert chat.model_name == "omniroute"


class Starts(BaseCallbackHandler):
    """Records what tracers see when a chat model run starts."""

    def __init__(self) -> None:
        self.metadata: list[dict] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, metadata: dict | None = None, **kwargs: Any):
        self.metadata.append(dict(metadata or {}))


async def test_tracing_names_the_routed_model(provider):
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    starts = Starts()
    config = {"callbacks": [starts]}
    chat.invoke("Hello.", config=config)
    await chat.ainvoke("Hello.", config=config, model="claude")
    list(chat.stream("Hello.", config=config, model="claude"))
    [c async for c in chat.astream("Hello.", config=config)]
    named = [(m["ls_provider"], m["ls_model_name"]) for m in starts.metadata]
    assert named == [("openai", GPT), ("anthropic", CLAUDE), ("anthropic", CLAUDE), ("openai", GPT)]
    # A run routed inside the hook (a refusal surfaces there) keeps the router's own name.
    chat.router.set_budget("broke", Budget(usd=1e-9))
    with pytest.raises(Exception, match="no candidate fits"):
        chat.invoke("Hello.", config=config, session="broke")
    assert (starts.metadata[-1]["ls_provider"], starts.metadata[-1]["ls_model_name"]) == ("omniroute", "omniroute")
    assert chat.router.budget_state("default").reserved == 0


@pytest.mark.slow
def test_an_attempt_given_up_on_is_charged_its_worst_case(provider):
    # The hung call goes on in its worker thread and the provider bills it when it answers:
    # the ledger must not hold less than the bill.
    fallback = claude(provider)
    fallback.model.invoke("Hello.")  # a first call imports and connects: run first, it outlasted 0.3 s
    provider.reset()
    provider.configure(GPT, hang_s=1.0)
    chat = ChatOmniRoute(candidates=[gpt(provider), fallback], budget=Budget(usd=1.0), timeout=0.3,
                         max_tokens=50)
    reply = chat.invoke("Hello.", session="s")
    assert reply.response_metadata["omniroute"]["model"] == "claude"
    time.sleep(1.2)
    assert provider.wait_idle()
    state = chat.router.budget_state("s")
    assert state.reserved == 0 and state.committed >= provider.bill_usd - 1e-12
    assert state.by_model["gpt"] == pytest.approx(chat.router.candidate("gpt").worst_case_cost(
        reply.response_metadata["omniroute"]["input_tokens"], 50), rel=0.2)


def test_a_handler_that_raises_on_a_fallback_leaves_nothing_held(provider):
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache

    class Boom(BaseCallbackHandler):
        raise_error = True

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            raise RuntimeError("boom")

    provider.configure(GPT, fail_status=500)
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0))
    for cache in (None, InMemoryCache()):  # with a cache, routing waits for the hook
        set_llm_cache(cache)
        try:
            for call in (lambda: chat.invoke("hi", {"callbacks": [Boom()]}),
                         lambda: list(chat.stream("hi", {"callbacks": [Boom()]}))):
                with pytest.raises(RuntimeError, match="boom"):
                    call()
                assert chat.router.store.open_reservations() == 0
        finally:
            set_llm_cache(None)


async def test_a_stream_turned_into_an_invoke_is_routed_once(provider):
    chat = ChatOmniRoute(candidates=[gpt(provider), claude(provider)], budget=Budget(usd=1.0), disable_streaming=True)
    assert list(chat.stream("Hello.", session="s"))[-1].response_metadata["omniroute"]["model"] == "gpt"
    assert [c async for c in chat.astream("Hello.", session="s")][-1].content
    assert chat.router.budget_state("s").requests == 2 and chat.router.store.open_reservations() == 0


def _record(reply: Any) -> dict[str, Any]:
    return reply.response_metadata["omniroute"]


@pytest.mark.parametrize("form", ["invoke", "ainvoke"])
async def test_a_client_timeout_waiting_for_the_answer_is_charged_its_worst_case(provider, form):
    # The provider has the whole request and may write — and bill — the answer after the client
    # gave up on it: the attempt is charged its worst case, never released (sync and async alike).
    provider.configure(GPT, hang_s=1.0)
    model = ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=0.3)
    slow = Candidate(name="gpt", model=model, input_price=0.15, output_price=0.6, prior_quality=0.8)
    chat = ChatOmniRoute(candidates=[slow, claude(provider)], budget=Budget(usd=1.0), max_tokens=50)
    tracker = SpendTracker()
    config = {"callbacks": [tracker]}
    reply = (chat.invoke("Hello.", config, session="s") if form == "invoke"
             else await chat.ainvoke("Hello.", config, session="s"))
    record = _record(reply)
    assert record["model"] == "claude" and record["failures"][0]["error"].endswith("TimeoutError")
    assert provider.wait_idle()
    state = chat.router.budget_state("s")
    gpt_tokens = chat.router.decide("Hello.", "probe", max_tokens=50).input_tokens["gpt"]
    assert state.reserved == 0 and state.released == 0
    assert state.by_model["gpt"] == pytest.approx(chat.router.candidate("gpt").worst_case_cost(gpt_tokens, 50))
    assert state.committed >= provider.bill_usd - 1e-12
    # What the timed-out attempt was charged is reported where users look, not only in the ledger.
    assert record["failures"][0]["charged_usd"] == pytest.approx(state.by_model["gpt"], abs=1e-12)
    assert tracker.usd[("s", "gpt")] == pytest.approx(state.by_model["gpt"], abs=1e-12)
    assert tracker.total_usd == pytest.approx(state.committed, abs=1e-12)
    assert tracker.calls == {("s", "claude"): 1}


def test_when_every_attempt_times_out_the_error_says_what_was_charged(provider):
    for name in (GPT, CLAUDE):
        provider.configure(name, hang_s=1.0)
    hung = [Candidate(name="gpt", model=ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT,
                                                   max_retries=0, timeout=0.3), input_price=0.15, output_price=0.6,
                      prior_quality=0.8),
            Candidate(name="claude", model=ChatAnthropic(base_url=provider.anthropic_url, api_key="test", model=CLAUDE,
                                                         max_retries=0, timeout=0.3), input_price=0.8,
                      output_price=4.0, prior_quality=0.7)]
    chat = ChatOmniRoute(candidates=hung, budget=Budget(usd=1.0), max_tokens=50)
    with pytest.raises(AllCandidatesFailed) as failed:
        chat.invoke("Hello.", session="s")
    assert provider.wait_idle()
    state = chat.router.budget_state("s")
    assert state.reserved == 0 and set(state.by_model) == {"gpt", "claude"}
    assert [a.charged_usd for a in failed.value.attempts] == pytest.approx(
        [state.by_model["gpt"], state.by_model["claude"]], abs=1e-12)
    assert failed.value.charged_usd == pytest.approx(state.committed, abs=1e-12)
    assert f"{failed.value.charged_usd:.9g} USD charged" in str(failed.value)


@pytest.mark.parametrize("form", ["invoke", "ainvoke"])
async def test_a_refused_connection_is_never_billed_and_its_hold_is_released(provider, form):
    import socket

    with socket.socket() as unused:  # a port nothing listens on: the request is never sent
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    model = ChatOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test", model=GPT, max_retries=0, timeout=5)
    down = Candidate(name="gpt", model=model, input_price=0.15, output_price=0.6, prior_quality=0.8)
    chat = ChatOmniRoute(candidates=[down, claude(provider)], budget=Budget(usd=1.0), max_tokens=50)
    reply = chat.invoke("Hello.", session="s") if form == "invoke" else await chat.ainvoke("Hello.", session="s")
    assert _record(reply)["failures"][0]["error"].endswith("ConnectionError")
    state = chat.router.budget_state("s")
    assert (state.reserved, state.released, list(state.by_model)) == (0, 1, ["claude"])
    (served,) = provider.requests  # the fallback's, priced as the provider counted it
    assert state.committed == pytest.approx(chat.router.candidate("claude").cost(served.prompt_tokens,
                                                                                  served.completion_tokens))


def _raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """`error` as a client raises it: `raise error from cause`, so that its chain is a real one."""
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def test_which_failures_may_still_be_billed():
    import asyncio

    import anyio
    import httpx

    from shared_core.fallbacks import may_be_billed

    request = httpx.Request("POST", "http://provider.test/v1/chat/completions")
    response = httpx.Response(500, request=request)
    billed = [
        TimeoutError("no answer"), asyncio.TimeoutError(), AttemptTimeout("no answer within 0.3 s"),
        httpx.ReadTimeout("read", request=request),
        _raised(openai.APITimeoutError(request=request), httpx.ReadTimeout("read", request=request)),
        _raised(anthropic.APITimeoutError(request=request), httpx.ReadTimeout("read", request=request)),
        _raised(openai.APITimeoutError(request=request)),  # no cause to tell: it may have been sent
        # A connection lost without an answer: the request may have reached the provider, which bills it.
        ConnectionResetError("reset"), httpx.ReadError("read", request=request),
        httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request),
        _raised(openai.APIConnectionError(request=request), httpx.ReadError("read", request=request)),
        _raised(anthropic.APIConnectionError(request=request), httpx.RemoteProtocolError("peer closed")),
        # Found by a user: a client reused across asyncio.run() calls; the server had answered and billed.
        _raised(openai.APIConnectionError(request=request), RuntimeError("Event loop is closed")),
        _raised(openai.APIConnectionError(request=request), _raised(httpx.ReadError("read", request=request),
                                                                   anyio.BrokenResourceError())),
    ]
    unbilled = [
        ConnectionRefusedError("refused"), RuntimeError("bug"), ValueError("a malformed answer"),
        BrokenPipeError("the request could not be written"), httpx.WriteError("write", request=request),
        httpx.LocalProtocolError("bad header"),
        _raised(openai.APIConnectionError(request=request), httpx.WriteError("write", request=request)),
        # Found by review: openai wraps whatever fails while sending in APIConnectionError; its name is no sign.
        _raised(openai.APIConnectionError(request=request),
                RuntimeError("Cannot send a request, as the client has been closed.")),
        _raised(openai.APIConnectionError(request=request), httpx.UnsupportedProtocol("no 'https://' in the URL")),
        _raised(openai.APIConnectionError(request=request), httpx.ProxyError("407 Proxy Authentication Required")),
        _raised(anthropic.APIConnectionError(request=request), TypeError("a bug while building the request")),
        RuntimeError("Event loop is closed"),  # raised by the caller's code itself, not from a client's connection
        httpx.ConnectTimeout("connect", request=request), httpx.PoolTimeout("pool", request=request),
        httpx.WriteTimeout("write", request=request),
        _raised(openai.APITimeoutError(request=request), httpx.ConnectTimeout("connect", request=request)),
        _raised(openai.APIConnectionError(request=request), httpx.ConnectError("refused", request=request)),
        openai.InternalServerError("boom", response=response, body=None),  # an answer: the error response
        _raised(openai.APITimeoutError(request=request), httpx.PoolTimeout("pool", request=request)),
    ]
    import socket

    import requests
    import urllib3

    aiohttp = pytest.importorskip("aiohttp")
    key = aiohttp.client_reqrep.ConnectionKey("provider.test", 443, True, True, None, None, None)
    pool = urllib3.HTTPSConnectionPool("provider.test")
    unbilled += [  # the connect phase of other HTTP stacks (urllib3 / requests, aiohttp): never sent
        socket.gaierror(-2, "Name or service not known"),
        urllib3.exceptions.NewConnectionError(pool, "refused"), urllib3.exceptions.NameResolutionError(
            "provider.test", pool, socket.gaierror(-2, "unknown")), urllib3.exceptions.ConnectTimeoutError("connect"),
        requests.exceptions.ConnectTimeout("connect"),
        # requests wraps urllib3's MaxRetryError, which names the refused connection as its reason.
        requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(
            pool, "/v1", urllib3.exceptions.NewConnectionError(pool, "refused"))),
        aiohttp.ClientConnectorError(key, OSError(111, "refused")), aiohttp.ConnectionTimeoutError("connect"),
    ]
    billed += [urllib3.exceptions.ReadTimeoutError(pool, "/v1", "read"), requests.exceptions.ReadTimeout("read"),
               aiohttp.SocketTimeoutError("read"), aiohttp.ServerDisconnectedError(),
               urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError("reset")),
               requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted."))]
    assert [may_be_billed(e) for e in billed] == [True] * len(billed)
    assert [may_be_billed(e) for e in unbilled] == [False] * len(unbilled)
    # Only explicit causes count: what the caller happened to be handling is no cause of this error.
    try:
        raise httpx.ConnectError("the caller's own", request=request)
    except httpx.ConnectError:
        inside = _raised(openai.APITimeoutError(request=request), _raised(httpx.ReadTimeout("read", request=request)))
    assert isinstance(inside.__cause__.__context__, httpx.ConnectError) and may_be_billed(inside)
    try:
        raise TimeoutError("the caller's own")
    except TimeoutError:
        plain = _raised(RuntimeError("a provider SDK bug"))
    assert isinstance(plain.__context__, TimeoutError) and not may_be_billed(plain)
    looped = TimeoutError("a cause that loops")
    looped.__context__ = RuntimeError("back")
    looped.__context__.__context__ = looped
    assert may_be_billed(looped)  # a cycle in the chain ends the walk


def test_a_cached_answer_reports_no_charge_for_the_attempts_that_failed_before_it(provider):
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import set_llm_cache

    provider.configure(GPT, hang_s=1.0)
    model = ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=0.3)
    slow = Candidate(name="gpt", model=model, input_price=0.15, output_price=0.6, prior_quality=0.8)
    chat = ChatOmniRoute(candidates=[slow, claude(provider)], budget=Budget(usd=1.0), max_tokens=50)
    set_llm_cache(InMemoryCache())
    try:
        first = _record(chat.invoke("Hello.", session="s"))
        committed = chat.router.budget_state("s").committed
        tracker = SpendTracker()  # a tracker that never saw the first call: the replay must add nothing
        replay = _record(chat.invoke("Hello.", {"callbacks": [tracker]}, session="s"))
    finally:
        set_llm_cache(None)
    assert first["failures"][0]["charged_usd"] > 0 and replay["cached"]
    assert [f["charged_usd"] for f in replay["failures"]] == [0.0]
    assert tracker.total_usd == 0.0 and chat.router.budget_state("s").committed == committed
