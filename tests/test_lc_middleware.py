"""OmniRouteMiddleware in a real `create_agent` loop: real ChatOpenAI candidates talking to the local provider
(tests/provider_server.py), which scripts the tool calls and bills honestly."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from provider_server import answer_text
from pydantic import BaseModel

from omniroute_lc import BudgetExceeded, ChatOmniRoute, OmniRouteMiddleware
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget, Candidate

ROOT = Path(__file__).resolve().parents[1]
EXACT = 1e-9  # USD
ANSWER = 20  # tokens of the final text answer
#: Candidate name -> (provider model, input price, output price, prior quality): a frontier and a cheap model.
MODELS = {"4o": ("gpt-4o", 2.5, 10.0, 0.9), "mini": ("gpt-4o-mini", 0.15, 0.6, 0.7)}
QUESTION = {"messages": [{"role": "user", "content": "What do 3 widgets cost in euros?"}]}


@tool
def unit_price(item: str) -> str:
    """The unit price of an item, in US dollars."""
    return "4.50"


@tool
def convert(amount: float, currency: str) -> str:
    """Convert US dollars into another currency."""
    return "12.15 EUR"


class Quote(BaseModel):
    """A price quote."""

    amount: float
    currency: str


def script(provider, tool_rounds: int = 2) -> None:
    """Price each model as its Candidate does; after a question it calls the tools in turn, then answers."""
    for model, input_price, output_price, _ in MODELS.values():
        provider.configure(model, input_price=input_price, output_price=output_price, answer_tokens=ANSWER,
                           tool_rounds=tool_rounds)


@pytest.fixture
def scripted(provider):
    """The provider, scripted: unit_price, then convert, then a text answer."""
    script(provider)
    return provider


def router(provider, **options) -> ChatOmniRoute:
    return ChatOmniRoute(candidates=[
        Candidate(name=name, model=ChatOpenAI(base_url=provider.openai_url, api_key="test", model=model, max_retries=0,
                                              timeout=10),
                  input_price=input_price, output_price=output_price, prior_quality=quality)
        for name, (model, input_price, output_price, quality) in MODELS.items()
    ], max_tokens=64, **options)


def agent(provider, chat: ChatOmniRoute, *middleware, **options):
    """An agent whose own model is a placeholder the provider never sees: every call must be routed."""
    placeholder = ChatOpenAI(base_url=provider.openai_url, api_key="test", model="placeholder", max_retries=0)
    return create_agent(placeholder, tools=[unit_price, convert], checkpointer=InMemorySaver(),
                        middleware=[*middleware, OmniRouteMiddleware(chat)], **options)


def thread(name: str) -> dict:
    return {"configurable": {"thread_id": name}}


def summaries(messages) -> list[dict]:
    return [m.response_metadata["omniroute"] for m in messages if isinstance(m, AIMessage)]


def assert_billed(chat: ChatOmniRoute, provider, records: list[dict], scope: str) -> None:
    """Each routed call cost what the provider billed, its usage × its candidate's prices, in `scope`."""
    requests = provider.requests
    assert len(requests) == len(records)
    for record, request in zip(records, requests, strict=False):
        model, input_price, output_price, _ = MODELS[record["model"]]
        assert request.model == model and record["session"] == scope
        priced = (request.prompt_tokens * input_price + request.completion_tokens * output_price) / 1e6
        assert record["actual_cost_usd"] == pytest.approx(request.cost_usd, abs=EXACT)
        assert record["actual_cost_usd"] == pytest.approx(priced, abs=EXACT)
        assert record["overrun_usd"] == 0  # tool calls in the prompt are counted as the provider bills them
    state = chat.router.budget_state(scope)
    assert state.requests == len(records) and state.reserved == 0
    assert state.committed == pytest.approx(sum(r.cost_usd for r in requests), abs=EXACT)


def test_every_step_of_the_tool_loop_is_routed_and_charged_to_the_thread(scripted):
    chat = router(scripted, budget=Budget(usd=1.0))
    out = agent(scripted, chat).invoke(QUESTION, thread("t-1"))
    steps = [m for m in out["messages"] if isinstance(m, AIMessage)]
    assert [[c["name"] for c in m.tool_calls] for m in steps] == [["unit_price"], ["convert"], []]
    assert steps[-1].text == answer_text(ANSWER)
    assert [m.text for m in out["messages"] if m.type == "tool"] == ["4.50", "12.15 EUR"]
    assert "placeholder" not in {r.model for r in scripted.requests}
    assert_billed(chat, scripted, summaries(out["messages"]), "t-1")


def test_threads_keep_separate_budgets(scripted):
    chat = router(scripted, budget=Budget(usd=1.0))
    lean = 0.0005  # affords the cheap model's worst case at each step, never the frontier model's
    chat.router.set_budget("lean", Budget(usd=lean))
    bot = agent(scripted, chat)
    rich = bot.invoke(QUESTION, thread("rich"))
    first = len(scripted.requests)
    poor = bot.invoke(QUESTION, thread("lean"))
    assert {r["model"] for r in summaries(rich["messages"])} == {"4o"}
    assert {r["model"] for r in summaries(poor["messages"])} == {"mini"}
    rich_bill, lean_bill = (sum(r.cost_usd for r in part) for part in (scripted.requests[:first],
                                                                       scripted.requests[first:]))
    assert chat.router.budget_state("rich").committed == pytest.approx(rich_bill, abs=EXACT)
    assert chat.router.budget_state("lean").committed == pytest.approx(lean_bill, abs=EXACT)
    assert chat.router.budget_state("lean").remaining == pytest.approx(lean - lean_bill, abs=EXACT)
    # A second turn on a thread keeps charging that thread only.
    again = bot.invoke({"messages": [{"role": "user", "content": "And 4 widgets?"}]}, thread("rich"))
    assert len(summaries(again["messages"])) == 6
    assert chat.router.budget_state("rich").requests == 6 and chat.router.budget_state("lean").requests == 3


def test_a_thread_out_of_budget_raises_budget_exceeded_and_keeps_its_history(scripted):
    chat = router(scripted, budget=Budget(usd=1.0))
    bot = agent(scripted, chat)
    bot.invoke(QUESTION, thread("t"))
    spent, billed = chat.router.budget_state("t").committed, len(scripted.requests)
    chat.router.set_budget("t", Budget(usd=spent))  # nothing left for the next step
    with pytest.raises(BudgetExceeded) as refused:
        bot.invoke({"messages": [{"role": "user", "content": "And 4 widgets?"}]}, thread("t"))
    assert refused.value.scope == "t"
    assert len(scripted.requests) == billed and chat.router.budget_state("t").committed == spent
    history = bot.get_state(thread("t")).values["messages"]
    assert history[-1].text == "And 4 widgets?" and len(summaries(history)) == 3
    # Other threads are unaffected.
    assert len(summaries(bot.invoke(QUESTION, thread("other"))["messages"])) == 3


def test_a_scope_callable_charges_the_user_from_the_agents_context(scripted):
    @dataclass
    class User:
        user_id: str

    chat = router(scripted, budget=Budget(usd=1.0))
    middleware = OmniRouteMiddleware(chat, scope=lambda request: f"users/{request.runtime.context.user_id}")
    bot = create_agent(chat, tools=[unit_price, convert], middleware=[middleware], context_schema=User,
                       checkpointer=InMemorySaver())
    for name in ("a", "b"):
        out = bot.invoke(QUESTION, thread(name), context=User("ada"))
        assert {r["session"] for r in summaries(out["messages"])} == {"users/ada"}
    assert chat.router.budget_state("users/ada").requests == 6
    assert chat.router.budget_state("a") is None and chat.router.budget_state("b") is None


@pytest.mark.parametrize("response_format", [Quote, ToolStrategy(Quote), ProviderStrategy(Quote)],
                         ids=["auto", "tool", "provider"])
def test_response_format_gives_a_structured_response(scripted, response_format):
    native = isinstance(response_format, ProviderStrategy)
    script(scripted, tool_rounds=2 if native else 3)  # the tool strategy's answer is a third tool call
    chat = router(scripted, budget=Budget(usd=1.0))
    out = agent(scripted, chat, response_format=response_format).invoke(QUESTION, thread("s"))
    assert out["structured_response"] == Quote(amount=1, currency="x")  # the provider's sample of the schema
    calls = [[c["name"] for c in m.tool_calls] for m in out["messages"] if isinstance(m, AIMessage)]
    assert calls == [["unit_price"], ["convert"], [] if native else ["Quote"]]
    bodies = [r.body for r in scripted.requests]
    if native:
        # Each candidate's own JSON schema mode; OpenAI's SDK wants strict tools beside it, and gets them.
        assert all(b["response_format"]["json_schema"]["name"] == "Quote" for b in bodies)
        assert all(t["function"]["strict"] for b in bodies for t in b["tools"])
    else:
        assert all("response_format" not in b and b["tool_choice"] == "required" for b in bodies)
    assert_billed(chat, scripted, summaries(out["messages"]), "s")


def test_fake_tool_candidates_finish_a_tool_strategy_agent_offline():
    """The README's offline try-out: FakeToolChatModel candidates, made to call a tool at every step
    (the tool strategy's "required"), call each tool once and then the answer tool, instead of the
    first tool again until the budget runs out."""
    chat = ChatOmniRoute(candidates=[
        Candidate(name=name, model=FakeToolChatModel(model_name=name), input_price=input_price,
                  output_price=output_price, prior_quality=quality, supports_tools=True)
        for name, (_, input_price, output_price, quality) in MODELS.items()
    ], budget=Budget(usd=0.5))
    agent = create_agent(chat, tools=[unit_price, convert], response_format=ToolStrategy(Quote),
                         checkpointer=InMemorySaver(), middleware=[OmniRouteMiddleware(chat)])
    out = agent.invoke(QUESTION, thread("offline"))
    calls = [[c["name"] for c in m.tool_calls] for m in out["messages"] if isinstance(m, AIMessage)]
    assert calls == [["unit_price"], ["convert"], ["Quote"]]
    again = agent.invoke(QUESTION, thread("offline"))  # a second question in the thread: tools called afresh
    calls = [[c["name"] for c in m.tool_calls] for m in again["messages"] if isinstance(m, AIMessage)]
    assert calls == [["unit_price"], ["convert"], ["Quote"]] * 2
    out = again
    assert out["structured_response"] == Quote(amount=3, currency=QUESTION["messages"][0]["content"])
    state = chat.router.budget_state("offline")
    assert state.requests == 6 and state.reserved == 0
    assert state.committed == pytest.approx(sum(r["actual_cost_usd"] for r in summaries(out["messages"])), abs=EXACT)


def test_model_settings_reach_the_candidate_and_a_cap_among_them_is_the_one_reserved(scripted):
    @wrap_model_call
    def terse(request, handler):
        return handler(request.override(model_settings={"max_tokens": 30, "temperature": 0.25}))

    chat = router(scripted, budget=Budget(usd=1.0))
    out = agent(scripted, chat, terse).invoke(QUESTION, thread("t"))
    assert [r.cap_sent for r in scripted.requests] == [30, 30, 30]  # not the router's max_tokens=64
    assert {r.body["temperature"] for r in scripted.requests} == {0.25}
    assert {r["max_output_tokens"] for r in summaries(out["messages"])} == {30}
    assert_billed(chat, scripted, summaries(out["messages"]), "t")


def test_streaming_messages_yields_the_routed_models_tokens(scripted):
    chat = router(scripted, budget=Budget(usd=1.0))
    chunks = [chunk for chunk, meta in agent(scripted, chat).stream(QUESTION, thread("t"), stream_mode="messages")
              if isinstance(chunk, AIMessageChunk)]
    texts = [c.text for c in chunks if c.text]
    assert "".join(texts) == answer_text(ANSWER) and len(texts) == 5  # 4 tokens a chunk
    assert [c.tool_call_chunks[0]["name"] for c in chunks if c.tool_call_chunks and c.tool_call_chunks[0]["name"]] \
        == ["unit_price", "convert"]
    records = [c.response_metadata["omniroute"] for c in chunks if "omniroute" in c.response_metadata]
    assert all(r.stream for r in scripted.requests)
    assert_billed(chat, scripted, records, "t")


async def test_async_invoke_and_stream(scripted):
    chat = router(scripted, budget=Budget(usd=1.0))
    bot = agent(scripted, chat)
    out = await bot.ainvoke(QUESTION, thread("a"))
    assert out["messages"][-1].text == answer_text(ANSWER)
    assert_billed(chat, scripted, summaries(out["messages"]), "a")
    scripted.reset()
    script(scripted)
    texts = [chunk.text async for chunk, _ in bot.astream(QUESTION, thread("b"), stream_mode="messages")
             if isinstance(chunk, AIMessageChunk)]
    assert "".join(texts) == answer_text(ANSWER)
    assert chat.router.budget_state("b").committed == pytest.approx(scripted.bill_usd, abs=EXACT)
    assert chat.router.budget_state("b").requests == 3


def test_built_from_chat_omniroute_arguments(scripted):
    chat = router(scripted)
    middleware = OmniRouteMiddleware(candidates=chat.candidates, budget=Budget(usd=0.5))
    assert middleware.chat.router.default_budget == Budget(usd=0.5)
    with pytest.raises(TypeError, match="not both"):
        OmniRouteMiddleware(chat, budget=Budget(usd=0.5))


def test_importing_the_adapter_does_not_need_langchain():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    check = """
import sys
import omniroute_lc
assert "langchain" not in sys.modules, "import omniroute_lc imported langchain"
sys.modules["langchain"] = None  # as if it were not installed
try:
    omniroute_lc.OmniRouteMiddleware
except ImportError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'omniroute[agents]'" in done.stdout
