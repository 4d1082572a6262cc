"""ChatOmniRoute charges budgets: reserve the worst case, commit the reported cost, refuse what cannot fit."""

from __future__ import annotations

import pytest
import tiktoken
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from lc_fakes import candidate, two_candidates

from omniroute_lc import ChatOmniRoute, SpendTracker
from shared_core import Budget, BudgetExceeded

PROMPT = "Explain the difference between a process and a thread to a new programmer."
ENC = tiktoken.get_encoding("cl100k_base")


def _usd(tokens_in: int, tokens_out: int, price_in: float, price_out: float) -> float:
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


def _prompt_tokens(text: str) -> int:
    # OpenAI's chat framing, as the core counts it: 3 tokens per message, 3 to prime the reply.
    return 3 + 3 + len(ENC.encode_ordinary("user")) + len(ENC.encode_ordinary(text))


def test_commits_the_cost_from_the_candidates_reported_usage():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    message = chat.invoke(PROMPT, session="s")
    info = message.response_metadata["omniroute"]
    chosen = chat.router.candidate(info["model"])
    usage = message.usage_metadata
    expected = _usd(usage["input_tokens"], usage["output_tokens"], chosen.input_price, chosen.output_price)

    assert info["actual_cost_usd"] == pytest.approx(expected)
    assert info["usage_source"] == "provider"
    state = chat.router.budget_state("s")
    assert state.committed == pytest.approx(expected)
    assert state.reserved == 0
    assert info["remaining_usd"] == pytest.approx(1.0 - expected)
    # The candidate's own identity and integer usage survive the routing.
    assert message.response_metadata["model_name"] == info["model"]
    assert message.response_metadata["model_provider"] == "fake"
    assert all(isinstance(usage[k], int) for k in ("input_tokens", "output_tokens", "total_tokens"))


def test_counts_tokens_with_tiktoken_when_the_candidate_reports_none():
    answer = "Paris is the capital of France."
    silent = GenericFakeChatModel(messages=iter([AIMessage(answer)]))
    chat = ChatOmniRoute(candidates=[candidate("mini", silent, input_price=0.15, output_price=0.60, quality=0.7)],
                         budget=Budget(usd=1.0))
    prompt = "What is the capital of France?"
    info = chat.invoke(prompt, session="s").response_metadata["omniroute"]

    expected = _usd(_prompt_tokens(prompt), len(ENC.encode_ordinary(answer)), 0.15, 0.60)
    assert info["usage_source"] == "counted"
    assert info["actual_cost_usd"] == pytest.approx(expected)
    assert chat.router.budget_state("s").committed == pytest.approx(expected)


def test_reserves_the_worst_case_of_max_tokens_and_caps_the_candidate_to_it():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0), max_tokens=3)
    message = chat.invoke(PROMPT)
    info = message.response_metadata["omniroute"]
    chosen = chat.router.candidate(info["model"])

    worst = _usd(_prompt_tokens(PROMPT), 3, chosen.input_price, chosen.output_price)
    assert info["reserved_usd"] == pytest.approx(worst)
    assert message.usage_metadata["output_tokens"] <= 3
    assert chat.router.budget_state("default").reserved == 0


def test_a_budget_too_small_for_any_candidate_refuses_before_calling():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1e-6), max_tokens=100)
    with pytest.raises(BudgetExceeded, match="no candidate fits"):
        chat.invoke(PROMPT, session="tight")
    state = chat.router.budget_state("tight")
    assert (state.committed, state.reserved, state.requests) == (0, 0, 0)


def test_routes_to_the_cheaper_candidate_when_only_it_fits():
    chat = ChatOmniRoute(candidates=two_candidates(), max_tokens=100)
    mini, big = chat.router.candidate("gpt-4o-mini"), chat.router.candidate("gpt-4o")
    tokens = _prompt_tokens(PROMPT)
    # Room for the cheap model's worst case, not the frontier model's.
    budget = (mini.worst_case_cost(tokens, 100) + big.worst_case_cost(tokens, 100)) / 2
    chat.router.set_budget("s", Budget(usd=budget))

    assert chat.invoke(PROMPT).response_metadata["omniroute"]["model"] == "gpt-4o"
    assert chat.invoke(PROMPT, session="s").response_metadata["omniroute"]["model"] == "gpt-4o-mini"


def test_nested_scopes_are_charged_together():
    chat = ChatOmniRoute(candidates=two_candidates())
    chat.router.set_budget("acme", Budget(usd=1.0))
    chat.router.set_budget("acme/agent-7", Budget(usd=0.5))
    info = chat.invoke(PROMPT, session="acme/agent-7").response_metadata["omniroute"]

    assert chat.router.budget_state("acme").committed == pytest.approx(info["actual_cost_usd"])
    assert chat.router.budget_state("acme/agent-7").committed == pytest.approx(info["actual_cost_usd"])
    assert info["remaining_usd"] == pytest.approx(0.5 - info["actual_cost_usd"])


def test_paced_budget_mixes_models_and_stays_within_budget():
    chat = ChatOmniRoute(candidates=two_candidates(), max_tokens=64)
    prompts = [f"Question {i}: {PROMPT}" for i in range(40)]
    always_best = sum(chat.invoke(p, model="gpt-4o").response_metadata["omniroute"]["actual_cost_usd"]
                      for p in prompts)
    budget = always_best / 3
    chat.router.set_budget("paced", Budget(usd=budget, horizon=len(prompts)))

    chosen = [chat.invoke(p, session="paced").response_metadata["omniroute"]["model"] for p in prompts]
    state = chat.router.budget_state("paced")
    assert state.committed <= budget
    assert {"gpt-4o", "gpt-4o-mini"} <= set(chosen)


def test_spend_tracker_totals_match_the_ledger():
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    tracker = SpendTracker()
    for session, model in [("a", "gpt-4o"), ("a", "gpt-4o-mini"), ("b", "gpt-4o-mini")]:
        chat.invoke(PROMPT, session=session, model=model, config={"callbacks": [tracker]})
    for _chunk in chat.stream(PROMPT, session="b", config={"callbacks": [tracker]}):
        pass

    ledger = {s: chat.router.budget_state(s) for s in ("a", "b")}
    assert tracker.by_session() == pytest.approx({s: st.committed for s, st in ledger.items()})
    by_model: dict[str, float] = {}
    for st in ledger.values():
        for model, usd in st.by_model.items():
            by_model[model] = by_model.get(model, 0.0) + usd
    assert tracker.by_model() == pytest.approx(by_model)
    assert tracker.total_usd == pytest.approx(sum(by_model.values()))
    assert tracker.calls == {("a", "gpt-4o"): 1, ("a", "gpt-4o-mini"): 1, ("b", "gpt-4o-mini"): 1,
                             ("b", "gpt-4o"): 1}
