"""Failures you can see through real LlamaIndex clients: the fallback policy, instrumentation events,
AllCandidatesFailed, deadlines."""

from __future__ import annotations

import logging
import time
from typing import Any

import openai
import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.llms.openai import OpenAI
from llama_index.llms.openai_like import OpenAILike

from omniroute_li import CandidateFailedEvent, OmniRouteLLM, SpendTracker
from shared_core import Budget, Candidate, Router
from shared_core.fallbacks import AllCandidatesFailed

GPT, MINI = "gpt-4o-mini", "local-mini"


def candidates(provider) -> list[Candidate]:
    return [
        Candidate(name="gpt", model=OpenAI(api_base=provider.openai_url, api_key="test", model=GPT, max_retries=0,
                                           timeout=10), input_price=0.15, output_price=0.6, prior_quality=0.8),
        Candidate(name="mini", model=OpenAILike(api_base=provider.openai_url, api_key="test", model=MINI,
                                                is_chat_model=True, is_function_calling_model=True, max_retries=0,
                                                timeout=10), input_price=0.1, output_price=0.4, prior_quality=0.6),
    ]


class Heard(BaseEventHandler):
    """Records OmniRoute's failure events from LlamaIndex instrumentation."""

    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Heard"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, CandidateFailedEvent):
            self.events.append(event)


@pytest.fixture
def heard():
    handler = Heard(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers.remove(handler)


MESSAGES = [ChatMessage(role="user", content="Hello.")]


@pytest.mark.parametrize("form", ["chat", "achat", "stream_chat", "astream_chat"])
async def test_a_server_error_falls_back_and_instrumentation_hears_it(provider, heard, caplog, form):
    provider.configure(GPT, fail_status=503)
    llm = OmniRouteLLM(candidates(provider), budget=Budget(usd=1.0))
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        if form == "chat":
            response = llm.chat(MESSAGES)
        elif form == "achat":
            response = await llm.achat(MESSAGES)
        elif form == "stream_chat":
            response = list(llm.stream_chat(MESSAGES))[-1]
        else:
            response = [c async for c in await llm.astream_chat(MESSAGES)][-1]
    record = response.additional_kwargs["omniroute"]
    assert record["model"] == "mini" and [f["model"] for f in record["failures"]] == ["gpt"]
    assert [(e.model, e.kind) for e in heard.events] == [("gpt", "transient")]
    assert "falling back to mini" in caplog.text
    assert [r.status for r in provider.requests] == [503, 200]


def test_a_bad_request_is_raised_at_once(provider):
    provider.configure(GPT, fail_status=400)
    llm = OmniRouteLLM(candidates(provider), budget=Budget(usd=1.0))
    with pytest.raises(openai.BadRequestError):
        llm.chat(MESSAGES)
    assert len(provider.requests) == 1 and llm.router.budget_state("default").reserved == 0


def test_when_every_candidate_fails_one_error_names_each(provider):
    provider.configure(GPT, fail_status=500)
    provider.configure(MINI, fail_status=429)
    llm = OmniRouteLLM(candidates(provider), budget=Budget(usd=1.0))
    with pytest.raises(AllCandidatesFailed) as failed:
        llm.complete("Hello.")
    assert [a.candidate for a in failed.value.attempts] == ["gpt", "mini"]
    assert isinstance(failed.value.errors[1], openai.RateLimitError)


def test_a_hung_candidate_is_given_up_on(provider):
    provider.configure(GPT, hang_s=3.0)
    router = Router(candidates(provider), attempt_timeout_s=0.3)
    llm = OmniRouteLLM(router=router)
    start = time.monotonic()
    response = llm.chat(MESSAGES)
    assert time.monotonic() - start < 2.0
    assert response.additional_kwargs["omniroute"]["failures"][0]["error"] == "AttemptTimeout"


async def test_a_tool_stream_never_read_holds_no_money(provider):
    from llama_index.core.tools import FunctionTool

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = OmniRouteLLM(candidates(provider), budget=Budget(usd=1.0))
    tool = FunctionTool.from_defaults(add)
    llm.stream_chat_with_tools([tool], user_msg="add 1 and 2")
    await llm.astream_chat_with_tools([tool], user_msg="add 1 and 2")
    assert llm.router.store.open_reservations() == 0 and not provider.requests


@pytest.mark.parametrize("form", ["chat", "achat"])
async def test_a_client_timeout_waiting_for_the_answer_is_charged_its_worst_case(provider, form):
    # The provider may write and bill the answer the client stopped waiting for: never released.
    provider.configure(GPT, hang_s=1.0)
    slow, mini = candidates(provider)
    slow = slow.model_copy(update={"model": OpenAI(api_base=provider.openai_url, api_key="test", model=GPT,
                                                   max_retries=0, timeout=0.3)})
    llm = OmniRouteLLM([slow, mini], budget=Budget(usd=1.0))
    ask = {"session": "s", "max_tokens": 50}
    response = llm.chat(MESSAGES, **ask) if form == "chat" else await llm.achat(MESSAGES, **ask)
    record = response.additional_kwargs["omniroute"]
    assert record["model"] == "mini" and record["failures"][0]["error"] == "APITimeoutError"
    assert provider.wait_idle()
    state = llm.router.budget_state("s")
    gpt_tokens = llm.router.decide("Hello.", "probe", max_tokens=50).input_tokens["gpt"]
    assert state.reserved == 0 and state.released == 0
    assert state.by_model["gpt"] == pytest.approx(llm.router.candidate("gpt").worst_case_cost(gpt_tokens, 50))
    served = provider.requests[-1]  # the fallback's: priced as the provider counted it
    assert state.by_model["mini"] == pytest.approx(
        llm.router.candidate("mini").cost(served.prompt_tokens, served.completion_tokens))
    # What the timed-out attempt was charged is reported where users look, not only in the ledger.
    assert record["failures"][0]["charged_usd"] == pytest.approx(state.by_model["gpt"], abs=1e-12)
    tracker = SpendTracker()
    tracker.track(response)
    assert tracker.usd == pytest.approx({("s", "gpt"): state.by_model["gpt"], ("s", "mini"): state.by_model["mini"]},
                                        abs=1e-12)
    assert tracker.calls == {("s", "mini"): 1}


async def test_a_call_cancelled_while_the_provider_works_on_it_is_charged_its_worst_case(provider):
    import asyncio

    provider.configure(GPT, hang_s=2.0)
    llm = OmniRouteLLM(candidates(provider), budget=Budget(usd=1.0))
    task = asyncio.create_task(llm.achat(MESSAGES, session="s", max_tokens=50))
    await asyncio.sleep(0.3)  # the request is with the provider
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = llm.router.budget_state("s")
    gpt_tokens = llm.router.decide("Hello.", "probe", max_tokens=50).input_tokens["gpt"]
    assert state.reserved == 0 and list(state.by_model) == ["gpt"]
    assert state.by_model["gpt"] == pytest.approx(llm.router.candidate("gpt").worst_case_cost(gpt_tokens, 50))
    assert provider.wait_idle()
