"""Money through real LlamaIndex provider clients (llama-index-llms-openai, -openai-like) talking to the
local provider in tests/provider_server.py, which bills honestly: what OmniRoute commits is the bill."""

from __future__ import annotations

import pytest
from ledger_support import assert_a_dropped_attempt_is_charged
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from llama_index.llms.openai_like import OpenAILike

from omniroute_li import BudgetExceeded, OmniRouteLLM
from omniroute_li.messages import to_request
from shared_core import Budget, Candidate, NoFeasibleCandidate

GPT, MINI = "gpt-4o-mini", "local-mini"
PRICES = {
    GPT: dict(input_price=0.15, output_price=0.6, cache_read_price=0.075),
    MINI: dict(input_price=0.1, output_price=0.4),
}
EXACT = 1e-9


@pytest.fixture
def billing(provider):
    for model, prices in PRICES.items():
        provider.configure(model, **prices)
    return provider


def openai_llm(provider, **kwargs) -> OpenAI:
    return OpenAI(api_base=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=10, **kwargs)


def like_llm(provider, **kwargs) -> OpenAILike:
    kwargs.setdefault("is_function_calling_model", True)
    return OpenAILike(api_base=provider.openai_url, api_key="test", model=MINI, is_chat_model=True,
                      max_retries=0, timeout=10, **kwargs)


def candidates(provider, gpt_kwargs=None, mini_kwargs=None) -> list[Candidate]:
    return [
        Candidate(name="gpt", model=openai_llm(provider, **(gpt_kwargs or {})), prior_quality=0.8, **PRICES[GPT]),
        Candidate(name="mini", model=like_llm(provider, **(mini_kwargs or {})), prior_quality=0.6, **PRICES[MINI]),
    ]


def record(response) -> dict:
    return response.additional_kwargs["omniroute"]


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


async def test_committed_spend_equals_the_bill_over_every_call_form(billing):
    llm = OmniRouteLLM(candidates(billing), budget=Budget(usd=10.0), session="run")
    messages = [ChatMessage(role="user", content="Say something.")]
    records = []
    for model in ("gpt", "mini"):
        records.append(record(llm.chat(messages, model=model)))
        records.append(record(await llm.achat(messages, model=model)))
        records.append(record(llm.complete("Complete this.", model=model)))
        records.append(record(await llm.acomplete("Complete this.", model=model)))
        records.append(record(list(llm.stream_chat(messages, model=model))[-1]))
        records.append(record([c async for c in await llm.astream_chat(messages, model=model)][-1]))
        records.append(record(list(llm.stream_complete("Stream this.", model=model))[-1]))
        records.append(record([c async for c in await llm.astream_complete("Stream this.", model=model)][-1]))
    assert len(billing.requests) == len(records) == 16
    # A tool-calling agent, streaming its turns: each turn charged the provider's own figures.
    for streaming in (True, False):
        agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm, streaming=streaming)
        await agent.run(user_msg="What is 6 times 7?")
    assert len(billing.requests) == 20

    state = llm.router.budget_state("run")
    assert state.committed == pytest.approx(billing.bill_usd, abs=EXACT)
    assert state.reserved == 0 and state.overdrawn == 0
    assert {r["usage_source"] for r in records} == {"provider"}
    assert all(r["overrun_usd"] == 0 for r in records)
    assert [b.cap_sent for b in billing.requests[:16]] == [r["max_output_tokens"] for r in records]
    assert all(b.usage_reported for b in billing.requests)  # streams asked for usage, and got it


def test_without_any_max_tokens_the_reserved_cap_is_sent_and_the_budget_holds(billing):
    billing.configure(MINI, answer_tokens=6_000, **PRICES[MINI])
    llm = OmniRouteLLM(candidates(billing)[1:], budget=Budget(usd=0.002))
    first = llm.chat([ChatMessage(role="user", content="Write me a long essay.")])
    assert billing.requests[0].cap_sent == record(first)["max_output_tokens"] == 4_096
    assert billing.requests[0].completion_tokens == 4_096
    with pytest.raises(BudgetExceeded):
        llm.chat([ChatMessage(role="user", content="And another.")])
    state = llm.router.budget_state("default")
    assert state.committed == pytest.approx(billing.bill_usd, abs=EXACT) and state.committed <= 0.002


def test_a_clients_own_limits_are_read(billing):
    # OpenAI(max_tokens=50) under $0.001: 50 output tokens are reserved (not 4,096), so it is served.
    llm = OmniRouteLLM(candidates(billing, gpt_kwargs={"max_tokens": 50})[:1], budget=Budget(usd=0.001))
    llm.chat([ChatMessage(role="user", content="Hello.")])
    assert billing.requests[-1].cap_sent == 50
    # A lower cap for one call goes through, though the client's own max_tokens would win in its request.
    llm.chat([ChatMessage(role="user", content="Hello.")], max_tokens=7)
    assert billing.requests[-1].cap_sent == 7 and billing.requests[-1].completion_tokens == 7
    assert llm.router.candidate("gpt").model.max_tokens == 50  # the shared client is untouched
    # OpenAILike(context_window=2048): the window is the client's, and a 7,000-token prompt is refused.
    small = OmniRouteLLM(candidates(billing, mini_kwargs={"context_window": 2_048})[1:])
    assert small.metadata.context_window == 2_048
    with pytest.raises(NoFeasibleCandidate, match="context window of 2048"):
        small.chat([ChatMessage(role="user", content="word " * 7_000)])
    assert billing.requests[-1].cap_sent == 7  # nothing went out


def test_budget_is_each_new_sessions_budget(billing):
    billing.configure(MINI, answer_tokens=1_000, **PRICES[MINI])
    llm = OmniRouteLLM(candidates(billing)[1:], budget=Budget(usd=0.002))
    user = llm.for_session("user-42")
    served = 0
    with pytest.raises(BudgetExceeded) as refused:
        for _ in range(100):
            user.chat([ChatMessage(role="user", content="Hello.")], max_tokens=1_000)
            served += 1
    assert 0 < served < 100 and refused.value.scope == "user-42"
    state = llm.router.budget_state("user-42")
    assert state.budget.usd == 0.002 and state.committed <= 0.002
    # A call's session= scope gets it too.
    llm.chat([ChatMessage(role="user", content="Hello.")], session="user-43")
    assert llm.router.budget_state("user-43").budget.usd == 0.002
    assert state.committed + llm.router.budget_state("user-43").committed == pytest.approx(billing.bill_usd, abs=EXACT)


def test_a_stream_without_provider_usage_says_the_figure_is_counted(billing):
    billing.configure(MINI, stream_usage=False, **PRICES[MINI])
    llm = OmniRouteLLM(candidates(billing)[1:], budget=Budget(usd=1.0))
    last = list(llm.stream_chat([ChatMessage(role="user", content="Stream.")]))[-1]
    assert record(last)["usage_source"] == "counted"
    assert last.raw.usage is None  # the provider's own last chunk, which reported nothing
    assert record(last)["output_tokens"] == billing.requests[0].completion_tokens
    assert last.additional_kwargs["completion_tokens"] == billing.requests[0].completion_tokens  # OmniRoute's count
    assert record(last)["actual_cost_usd"] == pytest.approx(billing.bill_usd, abs=EXACT)


def test_cache_reads_are_priced_like_the_bill(billing):
    billing.configure(GPT, cache_read_tokens=2_000, **PRICES[GPT])
    llm = OmniRouteLLM(candidates(billing)[:1], budget=Budget(usd=1.0))
    response = llm.chat([ChatMessage(role="user", content="A cached system prompt. " * 500)])
    assert record(response)["usage"]["cache_read_tokens"] == 2_000
    assert record(response)["actual_cost_usd"] == pytest.approx(billing.bill_usd, abs=EXACT)


def test_images_are_counted_before_the_call(billing):
    from test_money_langchain import png

    llm = OmniRouteLLM(candidates(billing)[:1], budget=Budget(usd=1.0))
    data = png(1024, 1024).split(",", 1)[1].encode()
    message = ChatMessage(role="user", blocks=[TextBlock(text="What is in these pictures?")]
                          + [ImageBlock(image=data, image_mimetype="image/png") for _ in range(4)])
    response = llm.chat([message])
    billed = billing.requests[0].prompt_tokens
    assert billed > 4 * 765
    estimate = llm.router.decide(to_request([message]), max_tokens=1).input_tokens["gpt"]
    assert estimate == billed
    assert record(response)["overrun_usd"] == 0 and record(response)["actual_cost_usd"] == pytest.approx(
        billing.bill_usd, abs=EXACT)


@pytest.mark.parametrize("form", ["chat", "achat", "stream_chat", "astream_chat"])
async def test_a_connection_dropped_after_the_provider_billed_is_charged_and_falls_back(billing, form):
    # The provider billed the answer, then the connection closed before it arrived: charged its worst
    # case (it was released as never sent, and the ledger fell short of the bill), then the next candidate.
    billing.configure(GPT, drop_after_bill=True, **PRICES[GPT])
    llm = OmniRouteLLM(candidates(billing), budget=Budget(usd=1.0), session="s")
    messages = [ChatMessage(role="user", content="Hello.")]
    if form == "chat":
        reply = llm.chat(messages, max_tokens=200)
    elif form == "achat":
        reply = await llm.achat(messages, max_tokens=200)
    elif form == "stream_chat":
        reply = list(llm.stream_chat(messages, max_tokens=200))[-1]
    else:
        reply = [c async for c in await llm.astream_chat(messages, max_tokens=200)][-1]
    assert record(reply)["model"] == "mini"
    assert_a_dropped_attempt_is_charged(llm.router, billing, "s", (GPT, MINI), "gpt", cap=200)
