"""The end of a budget: a candidate whose full output allowance no longer fits may be reserved with a
lower cap — sent to the provider as its max_tokens — when that cap still leaves `cap_headroom` times
its predicted answer. Without it the last part of every tight budget went unspent (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_openai import ChatOpenAI

from omniroute_lc import BudgetExceeded, ChatOmniRoute
from shared_core import Budget, Candidate, Router
from shared_core.evaluate import online_run, reference_column
from shared_core.fitting import fit_router
from shared_core.length import LengthPrior
from shared_core.router import MIN_LOWERED_CAP

PROMPT = "Which answer is right?"


def pair(answer_tokens: float = 20.0, **router_kwargs) -> Router:
    """A dear, better model (its answers `answer_tokens` long) and a cheap one; both may write 1,024 tokens."""
    dear = Candidate(name="dear", input_price=10.0, output_price=30.0, prior_quality=0.9, max_output_tokens=1024)
    cheap = Candidate(name="cheap", input_price=0.2, output_price=0.2, prior_quality=0.6, max_output_tokens=1024)
    return Router([dear, cheap], lengths=LengthPrior(default=answer_tokens), **router_kwargs)


def test_a_dear_model_is_reserved_with_the_cap_that_fits_what_is_left():
    router = pair()
    full = router.decide(PROMPT)  # no budget: the full allowance
    assert full.chosen == "dear" and full.output_cap == 1024
    left = router.candidate("dear").worst_case_cost(full.input_tokens["dear"], 1024) / 3
    router.set_budget("s", Budget(usd=left))
    decision = router.decide(PROMPT, "s")
    assert decision.chosen == "dear"
    assert 4 * 20 <= decision.output_cap < 1024
    dear = router.candidate("dear")
    assert decision.reserved == pytest.approx(dear.worst_case_cost(decision.input_tokens["dear"], decision.output_cap))
    assert decision.reserved <= left
    # The largest cap that fits: one more token would not.
    assert dear.worst_case_cost(decision.input_tokens["dear"], decision.output_cap + 1) > left
    assert decision.output_caps["cheap"] == 1024  # only the chosen candidate's cap is lowered
    assert decision.to_dict()["max_output_tokens"] == decision.output_cap and decision.to_dict()["cap_lowered"]
    assert not full.cap_lowered


def test_no_cap_is_lowered_below_headroom_times_the_predicted_answer():
    router = pair(cap_headroom=4.0)
    input_cost = router.candidate("dear").worst_case_cost(router.decide(PROMPT).input_tokens["dear"], 0)
    per_token = 30.0 / 1e6
    # Room for 79 output tokens: below 4 × 20 predicted, so the cheap model serves with its full cap.
    router.set_budget("s", Budget(usd=input_cost + 79.5 * per_token))
    decision = router.decide(PROMPT, "s")
    assert decision.chosen == "cheap" and decision.output_cap == 1024
    # Room for 81: the dear model, capped at 81.
    router.set_budget("t", Budget(usd=input_cost + 81.5 * per_token))
    decision = router.decide(PROMPT, "t")
    assert (decision.chosen, decision.output_cap) == ("dear", 81)


def test_the_floor_holds_for_tiny_predictions_and_none_turns_lowering_off():
    router = pair(answer_tokens=1.0)  # a one-token answer predicted: the floor is MIN_LOWERED_CAP
    base = router.decide(PROMPT)
    input_cost = router.candidate("dear").worst_case_cost(base.input_tokens["dear"], 0)
    router.set_budget("s", Budget(usd=input_cost + (MIN_LOWERED_CAP - 1) * 30e-6))
    assert router.decide(PROMPT, "s").chosen == "cheap"
    off = pair(cap_headroom=None)
    off.set_budget("s", Budget(usd=off.candidate("dear").worst_case_cost(off.decide(PROMPT).input_tokens["dear"]) / 3))
    assert off.decide(PROMPT, "s").chosen == "cheap"


def test_nothing_fits_still_refuses_with_the_full_allowance_named():
    router = pair()
    router.set_budget("s", Budget(usd=1e-7))
    with pytest.raises(BudgetExceeded) as refused:
        router.decide(PROMPT, "s")
    assert refused.value.output_tokens == 1024


@pytest.mark.parametrize("bad", [0.5, 0, -1, float("inf"), float("nan"), True, "4"])
def test_cap_headroom_is_validated(bad):
    with pytest.raises(ValueError, match="cap_headroom"):
        pair(cap_headroom=bad)


def test_cap_headroom_is_saved_with_the_router(tmp_path):
    router = pair(cap_headroom=6.0)
    router.save(tmp_path / "r")
    assert Router.load(tmp_path / "r").cap_headroom == 6.0


def test_a_lowered_cap_is_sent_to_a_real_client_and_the_bill_fits_the_budget(provider):
    # The provider would write 600 tokens whatever it is asked; a real ChatOpenAI client must send
    # the lowered cap, and the bill must stay within what the scope had left.
    provider.configure("gpt-4o", input_price=10.0, output_price=30.0, answer_tokens=600)
    provider.configure("gpt-4o-mini", input_price=0.2, output_price=0.2, answer_tokens=600)

    def model(name):
        return ChatOpenAI(base_url=provider.openai_url, api_key="test", model=name, max_retries=0, timeout=10)

    candidates = [
        Candidate(name="dear", model=model("gpt-4o"), input_price=10.0, output_price=30.0, prior_quality=0.9,
                  max_output_tokens=1024),
        Candidate(name="cheap", model=model("gpt-4o-mini"), input_price=0.2, output_price=0.2, prior_quality=0.6,
                  max_output_tokens=1024),
    ]
    chat = ChatOmniRoute(router=Router(candidates, lengths=LengthPrior(default=50.0)))
    budget = 0.012  # the dear model's full allowance (~0.031 USD) does not fit; 300-odd tokens do
    chat.router.set_budget("s", Budget(usd=budget))
    reply = chat.invoke(PROMPT, session="s")
    record = reply.response_metadata["omniroute"]
    assert record["model"] == "dear" and 200 <= record["max_output_tokens"] < 1024 and record["cap_lowered"]
    assert provider.requests[-1].cap_sent == record["max_output_tokens"]
    assert provider.requests[-1].completion_tokens == record["max_output_tokens"]  # the answer was cut there
    assert record["overrun_usd"] == 0
    state = chat.router.budget_state("s")
    assert state.committed == pytest.approx(provider.bill_usd, abs=1e-9) and state.committed <= budget


@pytest.mark.slow
@pytest.mark.parametrize("task", ["arc-challenge", "winogrande"])
def test_a_tight_budget_on_one_task_is_spent(routerbench, task):
    """One task alone, 10 % of GPT-4's cost: the full allowance of every better model outgrows the
    money left long before the end. Measured before lowering caps: 92.9 % (ARC) and 84.8 %
    (Winogrande) of the budget in random order."""
    data = routerbench.subset(routerbench.task == task)
    train, test = data.subset("train"), data.subset("test")
    candidates = train.candidates(max_output_tokens=1024)
    router = fit_router(train, "knn", candidates=candidates)
    ref_cost = float(np.nansum(test.cost[:, reference_column(train.quality)]))
    run = online_run(router, test, 0.1 * ref_cost, 0.1, order="random")
    assert 0.95 <= run.spent_usd / run.budget_usd <= 1.0
    assert run.refused == 0
    # Lowering caps buys answers, not just spend: no worse than the router that never lowers one.
    router.cap_headroom = None
    strict = online_run(router, test, 0.1 * ref_cost, 0.1, order="random")
    assert run.accuracy >= strict.accuracy - 0.005


def test_a_cap_that_cannot_be_sent_is_never_lowered():
    # A client with no max_tokens setting writes up to its own limit whatever is reserved: lowering
    # its cap would reserve less than it can cost.
    router = pair(cap_headroom=4.0)
    router.update_candidate(router.candidate("dear").model_copy(update={"accepts_output_cap": False}))
    input_cost = router.candidate("dear").worst_case_cost(router.decide(PROMPT).input_tokens["dear"], 0)
    router.set_budget("s", Budget(usd=input_cost + 500 * 30e-6))
    decision = router.decide(PROMPT, "s")
    assert decision.chosen == "cheap" and not decision.cap_lowered
    # Nor does an explicit max_tokens lower what it reserves.
    assert router.decide(PROMPT, max_tokens=10).output_caps["dear"] == 1024


def test_a_langchain_model_without_a_cap_setting_is_not_lowered():
    from langchain_core.language_models import GenericFakeChatModel

    from omniroute_lc import ChatOmniRoute

    uncappable = GenericFakeChatModel(messages=iter(["an answer"]))
    chat = ChatOmniRoute(candidates=[Candidate(name="m", model=uncappable, input_price=1, output_price=1,
                                               prior_quality=0.5, max_output_tokens=100)])
    assert chat.router.candidate("m").accepts_output_cap is False


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_an_invalid_length_prediction_counts_the_output_limit(bad, caplog):
    router = pair(answer_tokens=bad)
    decision = router.decide(PROMPT)
    assert decision.output_tokens["dear"] == 1024 and np.isfinite(decision.cost["dear"])
    assert "invalid predictions" in caplog.text
