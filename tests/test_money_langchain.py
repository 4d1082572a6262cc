"""Money through real LangChain provider clients (langchain-openai, langchain-anthropic) talking to the
local provider in tests/provider_server.py, which bills honestly: what OmniRoute commits is the bill."""

from __future__ import annotations

import base64
import logging
import struct
import zlib

import httpx
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from ledger_support import assert_a_dropped_attempt_is_charged
from pydantic import BaseModel

from omniroute_lc import BudgetExceeded, ChatOmniRoute
from omniroute_lc.request import core_messages
from shared_core import Budget, Candidate, Router
from shared_core.budget import BudgetExceeded as CoreBudgetExceeded

GPT, CLAUDE = "gpt-4o-mini", "claude-3-5-haiku-latest"
PRICES = {
    GPT: dict(input_price=0.15, output_price=0.6, cache_read_price=0.075),
    CLAUDE: dict(input_price=0.8, output_price=4.0, cache_read_price=0.08, cache_write_price=1.0),
}
EXACT = 1e-9  # USD: committed spend must equal the provider's bill to this


@pytest.fixture
def billing(provider):
    """The provider, pricing each model exactly as its Candidate does."""
    for model, prices in PRICES.items():
        provider.configure(model, **prices)
    return provider


def openai_model(provider, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=10, **kwargs)


def anthropic_model(provider, **kwargs) -> ChatAnthropic:
    return ChatAnthropic(base_url=provider.anthropic_url, api_key="test", model=CLAUDE, max_retries=0, timeout=10,
                         **kwargs)


def candidates(provider, gpt_kwargs=None, claude_kwargs=None, **overrides) -> list[Candidate]:
    return [
        Candidate(name="gpt", model=openai_model(provider, **(gpt_kwargs or {})), prior_quality=0.8,
                  **PRICES[GPT], **overrides),
        Candidate(name="claude", model=anthropic_model(provider, **(claude_kwargs or {})), prior_quality=0.7,
                  **PRICES[CLAUDE], **overrides),
    ]


def summaries(messages) -> list[dict]:
    return [m.response_metadata["omniroute"] for m in messages if "omniroute" in m.response_metadata]


def png(width: int, height: int) -> str:
    """A real (tiny, solid) PNG of this size as a data URL."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"".join(b"\0" + b"\0" * width for _ in range(height)))
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) \
        + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(body).decode()


class Answer(BaseModel):
    """A short answer."""

    answer: str


@tool
def lookup(city: str) -> str:
    """Look up the weather in a city."""
    return f"sunny in {city}"


async def test_committed_spend_equals_the_bill_over_every_call_form(billing):
    chat = ChatOmniRoute(candidates=candidates(billing), budget=Budget(usd=10.0), session="run")
    replies = []
    for model in ("gpt", "claude"):
        replies.append(chat.invoke("Say something.", model=model))
        replies.append(await chat.ainvoke("Say something else.", model=model))
        streamed = None
        for chunk in chat.stream("Stream it.", model=model):
            streamed = chunk if streamed is None else streamed + chunk
        replies.append(streamed)
        streamed = None
        async for chunk in chat.astream("Stream it async.", model=model):
            streamed = chunk if streamed is None else streamed + chunk
        replies.append(streamed)
        replies.extend(chat.batch(["One.", "Two."], model=model))
        # A tool round trip: the model calls the tool, then answers from its result.
        with_tools = chat.bind_tools([lookup])
        first = with_tools.invoke([HumanMessage("Weather in Paris?")], model=model)
        assert first.tool_calls and first.tool_calls[0]["name"] == "lookup"
        call = first.tool_calls[0]
        replies.append(first)
        replies.append(
            with_tools.invoke(
                [
                    HumanMessage("Weather in Paris?"),
                    first,
                    ToolMessage(lookup.invoke(call["args"]), tool_call_id=call["id"]),
                ],
                model=model,
            )
        )
        structured = chat.with_structured_output(Answer, include_raw=True).invoke("Answer briefly.", model=model)
        assert isinstance(structured["parsed"], Answer)
        replies.append(structured["raw"])
    json_schema = chat.with_structured_output(Answer, method="json_schema", include_raw=True)
    replies.append(json_schema.invoke("Answer in JSON.", model="gpt")["raw"])

    records = summaries(replies)
    assert len(records) == len(replies) == len(billing.requests) == 19
    state = chat.router.budget_state("run")
    assert state.committed == pytest.approx(billing.bill_usd, abs=EXACT)
    assert sum(r["actual_cost_usd"] for r in records) == pytest.approx(billing.bill_usd, abs=EXACT)
    assert state.reserved == 0 and state.overdrawn == 0
    # Every cost is the provider's own figure, within what was reserved, and the cap reserved was sent.
    assert {r["usage_source"] for r in records} == {"provider"}
    assert all(r["overrun_usd"] == 0 for r in records)
    assert [b.cap_sent for b in billing.requests] == [r["max_output_tokens"] for r in records]
    assert sum(state.calls_by_model.values()) == 19 and min(state.calls_by_model.values()) >= 8


def test_without_any_max_tokens_the_reserved_cap_is_sent_and_the_budget_holds(billing):
    # The usual call names no cap. The provider would write 6,000 tokens; the budget affords one call.
    billing.configure(GPT, answer_tokens=6_000, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=0.003))
    reply = chat.invoke("Write me a long essay.", session="s")
    record = reply.response_metadata["omniroute"]
    assert billing.requests[0].cap_sent == record["max_output_tokens"] == 4_096
    assert billing.requests[0].completion_tokens == 4_096 and record["overrun_usd"] == 0
    with pytest.raises(BudgetExceeded) as refused:
        chat.invoke("And another.", session="s")
    assert refused.value.scope == "s" and refused.value.output_tokens == 4_096
    assert "max_tokens=" in str(refused.value)
    state = chat.router.budget_state("s")
    assert state.committed == pytest.approx(billing.bill_usd, abs=EXACT) and state.committed <= 0.003
    assert len(billing.requests) == 1
    # The knob the refusal names makes the call fit.
    chat.invoke("And another.", session="s", max_tokens=200)
    assert billing.requests[-1].cap_sent == 200
    assert chat.router.budget_state("s").committed == pytest.approx(billing.bill_usd, abs=EXACT)


def test_a_clients_own_cap_is_reserved_and_sent(billing):
    chat = ChatOmniRoute(candidates=candidates(billing, gpt_kwargs={"max_tokens": 5})[:1], budget=Budget(usd=1.0))
    assert chat.router.candidate("gpt").max_output_tokens == 5
    reply = chat.invoke("Say a lot.", session="s")
    assert billing.requests[0].cap_sent == 5 and billing.requests[0].completion_tokens == 5
    assert reply.response_metadata["omniroute"]["max_output_tokens"] == 5
    # A router cap above the client's does not lift it; one below lowers it.
    chat.invoke("Say a lot.", session="s", max_tokens=50)
    chat.invoke("Say a lot.", session="s", max_tokens=3)
    assert [b.cap_sent for b in billing.requests] == [5, 5, 3]
    # Anthropic's client always sends its own max_tokens (4,096 for this model): that is the worst case.
    claude = ChatOmniRoute(candidates=candidates(billing, claude_kwargs={"max_tokens": 64})[1:])
    claude.invoke("Hi.")
    assert billing.requests[-1].cap_sent == 64 and claude.router.candidate("claude").max_output_tokens == 64


def test_a_clients_cap_above_the_default_is_what_its_user_asked_for(billing):
    # max_tokens=8000 on the client is honoured (the default 4,096 is for a cap nobody stated); the
    # model's profile limit (16,384 for gpt-4o-mini) only lowers; a cap stated on the Candidate wins.
    chat = ChatOmniRoute(candidates=candidates(billing, gpt_kwargs={"max_tokens": 8000})[:1])
    chat.invoke("Hi.")
    assert billing.requests[-1].cap_sent == 8000 and chat.router.candidate("gpt").max_output_tokens == 8000
    plain = ChatOmniRoute(candidates=candidates(billing)[:1])
    assert plain.router.candidate("gpt").max_output_tokens == 4096
    stated = ChatOmniRoute(candidates=candidates(billing, gpt_kwargs={"max_tokens": 8000}, max_output_tokens=2000)[:1])
    stated.invoke("Hi.")
    assert billing.requests[-1].cap_sent == 2000


def test_a_model_profile_declares_the_context_window(billing):
    chat = ChatOmniRoute(candidates=candidates(billing)[:1])
    assert chat.router.candidate("gpt").context_window == 128_000  # gpt-4o-mini's profile
    stated = Candidate(name="gpt", model=openai_model(billing), context_window=1_000, prior_quality=0.8, **PRICES[GPT])
    assert ChatOmniRoute(candidates=[stated]).router.candidate("gpt").context_window == 1_000


def test_images_are_counted_before_the_call(billing):
    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=1.0))
    content = [{"type": "text", "text": "What is in these pictures?"}] + [
        {"type": "image_url", "image_url": {"url": png(1024, 1024)}} for _ in range(4)
    ]
    reply = chat.invoke([HumanMessage(content=content)], session="s")
    record = reply.response_metadata["omniroute"]
    billed = billing.requests[0].prompt_tokens
    assert billed > 4 * 765  # the provider bills each 1024×1024 image as 765 tokens
    assert record["usage"]["input_tokens"] == billed
    # The estimate before the call counted them too: the reservation covered the bill.
    decision_tokens = chat.router.decide([{"role": "user", "content": content}], max_tokens=1).input_tokens["gpt"]
    assert decision_tokens == billed
    assert record["overrun_usd"] == 0 and record["reserved_usd"] >= record["actual_cost_usd"]


def test_prompt_cache_reads_and_writes_are_priced_like_the_bill(billing):
    billing.configure(CLAUDE, cache_write_tokens=12_304, **PRICES[CLAUDE])
    billing.configure(GPT, cache_read_tokens=12_000, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=candidates(billing), budget=Budget(usd=1.0))
    long_prompt = "A long system prompt that the provider caches. " * 1_400
    written = chat.invoke(long_prompt, session="s", model="claude").response_metadata["omniroute"]
    read = chat.invoke(long_prompt, session="s", model="gpt").response_metadata["omniroute"]
    assert written["usage"]["cache_write_tokens"] == 12_304 and read["usage"]["cache_read_tokens"] == 12_000
    bills = [b.cost_usd for b in billing.requests]
    assert written["actual_cost_usd"] == pytest.approx(bills[0], abs=EXACT)
    assert read["actual_cost_usd"] == pytest.approx(bills[1], abs=EXACT)
    assert written["overrun_usd"] == read["overrun_usd"] == 0
    assert chat.router.budget_state("s").committed == pytest.approx(billing.bill_usd, abs=EXACT)


def test_reasoning_tokens_are_charged_once(billing):
    billing.configure(GPT, reasoning_tokens=300, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=1.0))
    record = chat.invoke("Think first.", session="s").response_metadata["omniroute"]
    assert record["usage"]["reasoning_tokens"] == 300
    assert record["actual_cost_usd"] == pytest.approx(billing.bill_usd, abs=EXACT)


def test_a_stream_asks_for_usage_and_says_when_the_figure_is_its_own(billing):
    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=1.0))
    last = list(chat.stream("Stream.", session="s"))[-1]
    assert billing.requests[0].usage_requested
    assert last.response_metadata["omniroute"]["usage_source"] == "provider"
    # A provider that never reports stream usage: OmniRoute counts, and says so.
    billing.configure(GPT, stream_usage=False, **PRICES[GPT])
    last = list(chat.stream("Stream.", session="s"))[-1]
    record = last.response_metadata["omniroute"]
    assert record["usage_source"] == "counted"
    assert record["output_tokens"] == billing.requests[-1].completion_tokens
    assert record["actual_cost_usd"] == pytest.approx(billing.requests[-1].cost_usd, abs=EXACT)


def test_an_overrun_is_recorded_reported_and_paid_back(billing, caplog):
    billing.configure(GPT, answer_tokens=4_000, ignore_cap=True, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=0.0002))
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        reply = chat.invoke("Be brief.", session="s", max_tokens=100)
    record = reply.response_metadata["omniroute"]
    assert billing.requests[0].cap_sent == 100 and billing.requests[0].completion_tokens == 4_000
    assert record["actual_cost_usd"] == pytest.approx(billing.bill_usd, abs=EXACT)
    assert record["overrun_usd"] == pytest.approx(billing.bill_usd - record["reserved_usd"], abs=EXACT)
    assert "overrun" in caplog.text
    state = chat.router.budget_state("s")
    assert state.committed == pytest.approx(billing.bill_usd, abs=EXACT)
    assert state.overdrawn == pytest.approx(billing.bill_usd - 0.0002, abs=EXACT)
    with pytest.raises(BudgetExceeded, match="overdrawn"):
        chat.invoke("Again.", session="s", max_tokens=1)
    assert len(billing.requests) == 1


def test_a_free_local_candidate_works_on_redis_and_in_an_overdrawn_scope(billing):
    from ledger_support import redis_admin, require_redis

    require_redis()
    billing.configure("local-llama", input_price=0.0, output_price=0.0)
    prefix = "omniroute-test-free:"
    local = Candidate(name="local", input_price=0.0, output_price=0.0, prior_quality=0.3,
                      model=ChatOpenAI(base_url=billing.openai_url, api_key="test", model="local-llama", max_retries=0))
    router = Router([*candidates(billing)[:1], local], store=f"redis://127.0.0.1:6379/0?prefix={prefix}",
                    reservation_ttl_s=0.2)
    try:
        router.set_budget("s", Budget(usd=1e-6))
        chat = ChatOmniRoute(router=router, candidates=[*candidates(billing)[:1], local])
        record = chat.invoke("Hello.", session="s").response_metadata["omniroute"]
        assert record["model"] == "local" and record["actual_cost_usd"] == 0.0
        # A free hold that lapses leaves the ledger working.
        router.decide("Hello.", "s", model="local")
        import time
        time.sleep(0.3)
        assert router.store.open_reservations() == 0
        assert chat.invoke("Hello again.", session="s").response_metadata["omniroute"]["model"] == "local"
        assert router.budget_state("s").committed == 0.0
    finally:
        router.store.close()
        admin = redis_admin()
        keys = admin.keys(prefix + "*")
        if keys:
            admin.delete(*keys)


def test_budget_exceeded_is_the_core_error_exported_by_both_adapters():
    from omniroute_li import BudgetExceeded as LlamaIndexBudgetExceeded

    assert BudgetExceeded is CoreBudgetExceeded is LlamaIndexBudgetExceeded


def test_an_image_for_claude_is_priced_by_anthropics_rule(billing):
    chat = ChatOmniRoute(candidates=candidates(billing)[1:], budget=Budget(usd=1.0))
    assert chat.router.candidate("claude").provider == "anthropic"  # read from ChatAnthropic
    content = [{"type": "text", "text": "Describe it."},
               {"type": "image_url", "image_url": {"url": png(1000, 1000), "detail": "low"}}]
    record = chat.invoke([HumanMessage(content=content)], session="s").response_metadata["omniroute"]
    billed = billing.requests[0].prompt_tokens
    estimate = chat.router.decide([{"role": "user", "content": content}], max_tokens=1).input_tokens["claude"]
    assert estimate == billed and record["overrun_usd"] == 0


def test_a_stream_the_reader_abandons_is_charged_its_worst_case(billing):
    # The provider goes on writing after the reader stops; the ledger must never charge less than it bills.
    billing.configure(GPT, answer_tokens=1_000, chunk_delay_s=0.0005, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=1.0))
    for _ in range(3):
        stream = chat.stream("Tell me a long story.", session="s", max_tokens=1_000)
        first = next(stream)
        assert first.content is not None
        stream.close()
    assert billing.wait_idle()
    state = chat.router.budget_state("s")
    worst = chat.router.candidate("gpt").worst_case_cost(billing.requests[0].prompt_tokens, 1_000)
    assert state.reserved == 0 and state.committed == pytest.approx(3 * worst, abs=EXACT)
    assert state.committed >= billing.bill_usd - EXACT



def test_both_adapters_take_a_ledger_url(billing, tmp_path):
    from llama_index.core.llms import MockLLM

    from omniroute_li import OmniRouteLLM
    from shared_core.stores import SQLiteStore

    chat = ChatOmniRoute(candidates=candidates(billing)[:1], budget=Budget(usd=1.0), store=f"sqlite:///{tmp_path}/lc.db")
    chat.invoke("Hello.", session="s")
    assert isinstance(chat.router.store, SQLiteStore)
    assert chat.router.budget_state("s").committed == pytest.approx(billing.bill_usd, abs=EXACT)
    llm = OmniRouteLLM([Candidate(name="mock", model=MockLLM(), input_price=1, output_price=1, prior_quality=0.5,
                                  supports_tools=False)], store=f"sqlite:///{tmp_path}/li.db")
    assert isinstance(llm.router.store, SQLiteStore)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['budjet'\\]"):
        OmniRouteLLM([Candidate(name="mock", model=MockLLM(), input_price=1, output_price=1, prior_quality=0.5,
                                supports_tools=False)], budjet=Budget(usd=1.0))
    with pytest.raises(ValueError, match="store= applies to the router"):
        ChatOmniRoute(router=chat.router, store="memory://")


def test_tool_calls_in_the_history_are_counted_as_billed(billing):
    # An agent's later steps carry earlier tool calls (ids, the wire wrapper, arguments as a JSON
    # string) and their results; counting only name and arguments fell ~28 tokens short per call.
    chat = ChatOmniRoute(candidates=candidates(billing)[:1])
    call = {"name": "lookup", "args": {"city": "Paris", "units": "metric"}, "id": "call_Xy12abCD34efGH56ijKL78mn"}
    history = [HumanMessage("Weather in Paris?"), AIMessage(content="", tool_calls=[call, {**call, "id": "call_2"}]),
               ToolMessage("sunny in Paris", tool_call_id=call["id"]), ToolMessage("sunny", tool_call_id="call_2")]
    chat.invoke(history, max_tokens=5)
    billed = billing.requests[0].prompt_tokens
    estimate = chat.router.decide(core_messages(history), max_tokens=1).input_tokens["gpt"]
    ids = sum(len(c) for c in ("call_Xy12abCD34efGH56ijKL78mn", "call_2"))  # tokens ≤ characters
    assert billed <= estimate <= billed + ids  # the ids of tool results are counted too (conservatively)


@pytest.mark.parametrize("form", ["invoke", "ainvoke", "stream", "astream"])
async def test_a_connection_dropped_after_the_provider_billed_is_charged_and_falls_back(billing, form):
    # The provider did the work and billed it, then the connection closed before the answer arrived (a
    # proxy cutting it; found by a user reusing a client across asyncio.run() calls): that attempt was
    # released as never sent, and the ledger fell short of the bill. It is now charged its worst case.
    billing.configure(GPT, drop_after_bill=True, **PRICES[GPT])
    chat = ChatOmniRoute(candidates=candidates(billing), budget=Budget(usd=1.0))
    ask = dict(session="s", max_tokens=200)
    if form == "invoke":
        reply = chat.invoke("Hello.", **ask)
    elif form == "ainvoke":
        reply = await chat.ainvoke("Hello.", **ask)
    elif form == "stream":
        reply = list(chat.stream("Hello.", **ask))[-1]
    else:
        reply = [c async for c in chat.astream("Hello.", **ask)][-1]
    record = reply.response_metadata["omniroute"]
    assert (record["model"], record["failed"]) == ("claude", ["gpt"])
    assert_a_dropped_attempt_is_charged(chat.router, billing, "s", (GPT, CLAUDE), "gpt", cap=200)


def test_a_request_that_never_left_its_client_is_released_not_charged(billing):
    # Found by review: openai wraps whatever fails while sending in APIConnectionError — here a closed
    # client; a bad URL or a proxy's refusal the same — so that name alone must not charge the worst case.
    own = httpx.Client()  # its own: langchain-openai shares one httpx client between models by default
    closed = openai_model(billing, http_client=own)
    own.close()
    gpt, claude = candidates(billing)
    chat = ChatOmniRoute(candidates=[gpt.model_copy(update={"model": closed}), claude], budget=Budget(usd=1.0))
    reply = chat.invoke("Hello.", session="s", max_tokens=200)
    record = reply.response_metadata["omniroute"]
    assert (record["model"], record["failed"]) == ("claude", ["gpt"])
    assert record["failures"][0]["error"].endswith("ConnectionError")  # langchain-openai's wrapper of openai's
    assert billing.wait_idle()
    (answered,) = billing.requests  # the closed client sent nothing
    state = chat.router.budget_state("s")
    assert state.reserved == 0 and state.committed == pytest.approx(answered.cost_usd, abs=EXACT)
