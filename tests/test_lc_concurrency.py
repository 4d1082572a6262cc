"""Many calls at once on one session budget: the cap holds, nothing stays reserved, every answer is priced."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessage
from lc_fakes import FakeToolChatModel, candidate

from omniroute_lc import ChatOmniRoute
from shared_core import Budget, BudgetExceeded

BUDGET = 0.01


def _chat() -> ChatOmniRoute:
    # A millisecond of latency per call keeps many reservations open at the same time.
    return ChatOmniRoute(
        candidates=[
            candidate("gpt-4o-mini", FakeToolChatModel(model_name="gpt-4o-mini", latency_s=0.001),
                      input_price=0.15, output_price=0.60, quality=0.70),
            candidate("gpt-4o", FakeToolChatModel(model_name="gpt-4o", latency_s=0.001),
                      input_price=2.50, output_price=10.00, quality=0.85),
        ],
        max_tokens=64,
    )


def _check(chat: ChatOmniRoute, results: list, scope: str) -> None:
    answers = [r for r in results if isinstance(r, AIMessage)]
    refusals = [r for r in results if not isinstance(r, AIMessage)]
    assert all(isinstance(r, BudgetExceeded) for r in refusals), refusals[:3]
    assert answers and refusals  # the budget was meant to bind
    state = chat.router.budget_state(scope)
    assert state.committed <= BUDGET
    assert state.reserved == 0
    assert chat.router.store.open_reservations() == 0
    assert state.requests == len(answers)
    costs = [a.response_metadata["omniroute"]["actual_cost_usd"] for a in answers]
    assert all(c > 0 for c in costs)
    assert sum(costs) == pytest.approx(state.committed)


async def test_200_concurrent_ainvoke_on_one_session_budget():
    chat = _chat()
    chat.router.set_budget("load", Budget(usd=BUDGET))
    calls = [chat.ainvoke(f"Request {i}: summarise the French Revolution.", session="load") for i in range(200)]
    _check(chat, await asyncio.gather(*calls, return_exceptions=True), "load")


def test_200_calls_from_16_threads_on_one_session_budget():
    chat = _chat()
    chat.router.set_budget("threads", Budget(usd=BUDGET))
    prompts = [f"Request {i}: summarise the French Revolution." for i in range(200)]
    results = chat.batch(prompts, config={"max_concurrency": 16}, return_exceptions=True, session="threads")
    _check(chat, results, "threads")
