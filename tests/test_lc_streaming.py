"""Streaming through the router: one decision, the summary on exactly one chunk, budgets settled."""

from __future__ import annotations

import pytest
from langchain_core.language_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from lc_fakes import FailingChatModel, candidate, two_candidates

from omniroute_lc import ChatOmniRoute
from shared_core import Budget

PROMPT = "Write me two haikus about budgets."


def _summaries(chunks: list) -> list[dict]:
    return [c.response_metadata["omniroute"] for c in chunks if "omniroute" in c.response_metadata]


def _check_stream(chat: ChatOmniRoute, chunks: list, scope: str) -> None:
    summaries = _summaries(chunks)
    assert len(summaries) == 1
    assert sum("model_name" in c.response_metadata for c in chunks) == 1
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    info = full.response_metadata["omniroute"]
    chosen = chat.router.candidate(info["model"])
    usage = full.usage_metadata
    expected = (usage["input_tokens"] * chosen.input_price + usage["output_tokens"] * chosen.output_price) / 1e6
    assert info["actual_cost_usd"] == pytest.approx(expected)
    state = chat.router.budget_state(scope)
    assert state.committed == pytest.approx(expected)
    assert state.reserved == 0
    assert full.text.startswith(f"{info['model']} heard:")


def test_stream_settles_and_reports_once():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    _check_stream(chat, list(chat.stream(PROMPT, session="s")), "s")


async def test_astream_settles_and_reports_once():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    _check_stream(chat, [c async for c in chat.astream(PROMPT, session="s")], "s")


async def test_astream_events_show_one_model_run_with_the_routing_summary():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    events = [e async for e in chat.astream_events(PROMPT, version="v2", session="s")]
    kinds = [e["event"] for e in events]
    assert kinds.count("on_chat_model_start") == 1
    assert kinds.count("on_chat_model_end") == 1
    assert kinds.count("on_chat_model_stream") > 2
    output = events[-1]["data"]["output"]
    assert output.response_metadata["omniroute"]["actual_cost_usd"] == pytest.approx(
        chat.router.budget_state("s").committed
    )


def test_candidate_that_cannot_stream_answers_in_one_chunk():
    answer = AIMessage("Budgets bind.", usage_metadata={"input_tokens": 9, "output_tokens": 3, "total_tokens": 12},
                       response_metadata={"model_name": "batch-only"})
    model = FakeMessagesListChatModel(responses=[answer])
    chat = ChatOmniRoute(candidates=[candidate("batch-only", model, input_price=1.0, output_price=2.0, quality=0.5)])
    chunks = list(chat.stream(PROMPT))
    assert "".join(c.text for c in chunks) == "Budgets bind."
    assert _summaries(chunks)[0]["actual_cost_usd"] == pytest.approx((9 * 1.0 + 3 * 2.0) / 1e6)


def test_failure_before_the_first_chunk_falls_back():
    failing = FailingChatModel()
    chat = ChatOmniRoute(candidates=[
        candidate("gpt-4o", failing, input_price=2.5, output_price=10.0, quality=0.85),
        candidate("gpt-4o-mini", input_price=0.15, output_price=0.6, quality=0.7),
    ], budget=Budget(usd=1.0))
    chunks = list(chat.stream(PROMPT, session="s"))
    info = _summaries(chunks)[0]
    assert (info["model"], info["failed"], info["attempt"]) == ("gpt-4o-mini", ["gpt-4o"], 1)
    assert failing.calls == 1
    assert chat.router.budget_state("s").reserved == 0


def test_failure_after_the_first_chunk_propagates_and_charges_what_was_produced():
    failing = FailingChatModel(chunks_before_error=2, error=ConnectionError("stream cut"))
    chat = ChatOmniRoute(candidates=[
        candidate("gpt-4o", failing, input_price=2.5, output_price=10.0, quality=0.85),
        candidate("gpt-4o-mini", input_price=0.15, output_price=0.6, quality=0.7),
    ], budget=Budget(usd=1.0))
    received = []
    with pytest.raises(ConnectionError, match="stream cut"):
        for chunk in chat.stream(PROMPT, session="s"):
            received.append(chunk.text)
    assert received == ["part0 ", "part1 "]
    state = chat.router.budget_state("s")
    assert state.reserved == 0
    assert state.by_model == {"gpt-4o": pytest.approx(state.committed)}
    assert state.committed > 0


async def test_abandoned_stream_is_charged_its_worst_case():
    # The reader stopped, not the provider: it may go on writing (and billing) up to the cap.
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    stream = chat.astream(PROMPT, session="s")
    first = await stream.__anext__()
    await stream.aclose()
    assert first.text
    state = chat.router.budget_state("s")
    assert state.reserved == 0 and state.requests == 1
    (model, spent), = state.by_model.items()
    chosen = chat.router.candidate(model)
    assert spent >= chosen.output_price * chosen.max_output_tokens / 1e6
