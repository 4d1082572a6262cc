"""A candidate that raises is released and the next-best is tried; the error that ends a call is real."""

from __future__ import annotations

import asyncio

import pytest
from lc_fakes import FailingChatModel, FakeToolChatModel, candidate

from omniroute_lc import ChatOmniRoute
from shared_core import Budget

PROMPT = "Translate 'Where is the nearest library?' into Spanish."


def _chat(first: FailingChatModel, second, **options) -> ChatOmniRoute:
    return ChatOmniRoute(candidates=[
        candidate("claude-v2", first, input_price=8.0, output_price=24.0, quality=0.9),
        candidate("gpt-4o", second, input_price=2.5, output_price=10.0, quality=0.85),
        candidate("gpt-4o-mini", FailingChatModel(error=RuntimeError("third")), input_price=0.15,
                  output_price=0.6, quality=0.7),
    ], budget=Budget(usd=1.0), **options)


def test_falls_back_to_the_next_best_candidate():
    failing = FailingChatModel(error=ConnectionRefusedError("provider down"))
    chat = _chat(failing, FakeToolChatModel(model_name="gpt-4o"))
    message = chat.invoke(PROMPT, session="s")
    info = message.response_metadata["omniroute"]
    assert (info["model"], info["attempt"], info["failed"]) == ("gpt-4o", 1, ["claude-v2"])
    assert message.response_metadata["model_name"] == "gpt-4o"
    assert failing.calls == 1
    state = chat.router.budget_state("s")
    assert state.reserved == 0
    assert state.by_model == {"gpt-4o": pytest.approx(info["actual_cost_usd"])}


async def test_async_falls_back_to_the_next_best_candidate():
    chat = _chat(FailingChatModel(), FakeToolChatModel(model_name="gpt-4o"))
    info = (await chat.ainvoke(PROMPT, session="s")).response_metadata["omniroute"]
    assert (info["model"], info["failed"]) == ("gpt-4o", ["claude-v2"])
    assert chat.router.budget_state("s").reserved == 0


def test_when_every_try_fails_the_last_real_error_is_raised_and_nothing_is_charged():
    chat = _chat(FailingChatModel(error=ConnectionRefusedError("first")),
                 FailingChatModel(error=ConnectionRefusedError("second")))
    with pytest.raises(RuntimeError, match="third"):
        chat.invoke(PROMPT, session="s")
    state = chat.router.budget_state("s")
    assert (state.committed, state.reserved) == (0, 0)


def test_max_fallbacks_bounds_the_tries():
    second = FailingChatModel(error=ConnectionRefusedError("second"))
    chat = _chat(FailingChatModel(error=ConnectionRefusedError("first")), second, max_fallbacks=0)
    with pytest.raises(ConnectionRefusedError, match="first"):
        chat.invoke(PROMPT, session="s")
    assert second.calls == 0
    assert chat.router.budget_state("s").reserved == 0


async def test_cancelling_a_call_in_flight_charges_its_worst_case_without_falling_back():
    # The candidate has the request: it may go on and bill the answer nobody will read.
    slow = FakeToolChatModel(model_name="claude-v2", latency_s=5.0)
    second = FailingChatModel()
    chat = _chat(slow, second)
    task = asyncio.create_task(chat.ainvoke(PROMPT, session="s"))
    await asyncio.sleep(0.05)
    held = chat.router.budget_state("s").reserved
    assert held > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert second.calls == 0
    state = chat.router.budget_state("s")
    assert (state.committed, state.reserved, state.released) == (pytest.approx(held), 0, 0)
    assert list(state.by_model) == ["claude-v2"]
