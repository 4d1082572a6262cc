"""One pricing rule: Usage as providers report it, cache prices, and what the router does with money."""

from __future__ import annotations

import logging

import pytest

from shared_core import Budget, BudgetExceeded, Candidate, NoFeasibleCandidate, Router
from shared_core.calls import settle_usage
from shared_core.pricing import Usage, price, usage_from_report

SONNET = Candidate(name="sonnet", input_price=3.0, output_price=15.0, cache_read_price=0.3, cache_write_price=3.75,
                   prior_quality=0.9)


def test_usage_parts_must_fit_their_totals():
    with pytest.raises(ValueError, match="cache tokens"):
        Usage(input_tokens=10, cache_read_tokens=8, cache_write_tokens=3)
    with pytest.raises(ValueError, match="reasoning_tokens"):
        Usage(output_tokens=5, reasoning_tokens=6)
    with pytest.raises(ValueError, match="input_tokens must be an integer >= 0"):
        Usage(input_tokens=-1)
    with pytest.raises(ValueError, match="must be an integer"):
        Usage(output_tokens=1.5)  # type: ignore[arg-type]


def test_cache_reads_and_writes_are_priced_at_their_own_rates():
    # 12,304 tokens written to the cache and 1,000 plain, 200 out: Anthropic's bill for Sonnet.
    usage = Usage(input_tokens=13_304, output_tokens=200, cache_write_tokens=12_304)
    assert price(SONNET, usage) == pytest.approx((1_000 * 3.0 + 12_304 * 3.75 + 200 * 15.0) / 1e6, rel=1e-15)
    read = Usage(input_tokens=13_304, output_tokens=200, cache_read_tokens=12_304)
    assert price(SONNET, read) == pytest.approx((1_000 * 3.0 + 12_304 * 0.3 + 200 * 15.0) / 1e6, rel=1e-15)
    plain = Candidate(name="p", input_price=3.0, output_price=15.0, prior_quality=0.5)
    assert price(plain, read) == pytest.approx(plain.cost(13_304, 200), rel=1e-15)  # unset = input price


def test_reports_of_every_shape_read_into_one_usage():
    langchain = {"input_tokens": 1_500, "output_tokens": 300, "total_tokens": 1_800,
                 "input_token_details": {"cache_read": 1_000, "cache_creation": 200},
                 "output_token_details": {"reasoning": 120}}
    openai = {"prompt_tokens": 1_500, "completion_tokens": 300, "total_tokens": 1_800,
              "prompt_tokens_details": {"cached_tokens": 1_000, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 120}}
    # Anthropic's input_tokens excludes the cached parts.
    anthropic = {"input_tokens": 300, "output_tokens": 300, "cache_read_input_tokens": 1_000,
                 "cache_creation_input_tokens": 200}
    lc, oa, an = (usage_from_report(r) for r in (langchain, openai, anthropic))
    assert lc.usage == Usage(1_500, 300, 1_000, 200, reasoning_tokens=120)
    assert an.usage == Usage(1_500, 300, 1_000, 200)
    assert lc.usage.reasoning_tokens == oa.usage.reasoning_tokens == 120
    assert oa.usage == Usage(1_500, 300, cache_read_tokens=1_000, reasoning_tokens=120)
    assert all(r.has_input and r.has_output for r in (lc, oa, an))
    # Reasoning is part of the output: charged once.
    assert price(SONNET, oa.usage) == pytest.approx((500 * 3.0 + 1_000 * 0.3 + 300 * 15.0) / 1e6, rel=1e-15)
    assert usage_from_report(None) is None and usage_from_report({"model": "x"}) is None
    partial = usage_from_report({"completion_tokens": 7})
    assert (partial.has_input, partial.has_output, partial.usage.output_tokens) == (False, True, 7)


def test_an_inconsistent_report_keeps_its_totals(caplog):
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        read = usage_from_report({"prompt_tokens": 10, "completion_tokens": 5,
                                  "prompt_tokens_details": {"cached_tokens": 50}})
    assert read.usage == Usage(10, 5, cache_read_tokens=10)
    assert "inconsistent" in caplog.text


def _pair(**budget):
    big = Candidate(name="big", input_price=10.0, output_price=30.0, prior_quality=0.9,
                    context_window=8_192, max_output_tokens=4_096)
    small = Candidate(name="small", input_price=0.5, output_price=1.5, prior_quality=0.6,
                      context_window=128_000, max_output_tokens=4_096)
    return Router([big, small], **budget)


def test_the_window_holds_input_plus_the_output_cap():
    router = _pair()
    prompt = "word " * 7_490  # about 7,500 tokens
    # An explicit cap that does not fit beside the prompt rules the 8k model out.
    decision = router.decide(prompt, max_tokens=2_000)
    assert decision.chosen == "small" and "big" not in decision.ranking
    assert decision.output_cap == 2_000
    # Without one the cap shrinks to the room the prompt leaves, as providers do.
    decision = router.decide(prompt)
    assert decision.chosen == "big"
    assert decision.output_cap == 8_192 - decision.input_tokens["big"]
    with pytest.raises(NoFeasibleCandidate, match="plus max_tokens=2000 exceeds its context window of 8192"):
        router.decide(prompt, max_tokens=2_000, model="big")


def test_a_refusal_names_the_exhausted_enclosing_scope_and_the_knob():
    router = _pair()
    router.set_budget("acme", Budget(usd=2e-5))
    router.set_budget("acme/b", Budget(usd=100.0))
    with pytest.raises(BudgetExceeded) as refused:
        router.decide("Summarise this contract.", "acme/b")
    error = refused.value
    assert error.scope == "acme" and error.remaining == pytest.approx(2e-5)
    assert error.model == "small" and error.output_tokens == 4_096
    assert error.worst_case_usd == pytest.approx(router.candidate("small").worst_case_cost(
        router.decide("Summarise this contract.", max_tokens=1).input_tokens["small"], 4_096))
    assert "scope 'acme'" in str(error) and "4096 tokens" in str(error) and "max_tokens=" in str(error)
    # Lowering the knob it names makes the call fit.
    assert router.decide("Summarise this contract.", "acme/b", max_tokens=5).chosen == "small"


def test_an_overrun_is_recorded_reported_and_paid_back_before_paid_calls(caplog):
    free = Candidate(name="local", input_price=0.0, output_price=0.0, prior_quality=0.3)
    router = Router([*_pair().candidates, free])
    router.set_budget("s", Budget(usd=0.01))
    decision = router.decide("Tell me a story.", "s", max_tokens=100, model="big")
    # The provider ignored the cap: 4,000 output tokens where 100 were reserved.
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        settlement = settle_usage(router, decision, Usage(input_tokens=12, output_tokens=4_000))
    cost = router.candidate("big").cost(12, 4_000)
    assert settlement.cost_usd == pytest.approx(cost)
    assert settlement.overrun_usd == pytest.approx(cost - decision.reserved, abs=1e-9)
    assert "overrun" in caplog.text and "'s'" in caplog.text
    state = router.budget_state("s")
    assert state.committed == pytest.approx(cost) and state.overdrawn == pytest.approx(cost - 0.01, abs=1e-9)
    assert state.remaining == 0.0
    assert settlement.to_dict()["overrun_usd"] == settlement.overrun_usd
    # Paid calls are refused until the scope is back within budget; a free one is never refused.
    with pytest.raises(BudgetExceeded, match="is overdrawn by"):
        router.decide("And another.", "s", exclude=["local"])
    local = router.decide("And another.", "s")
    assert local.chosen == "local" and local.reserved == 0.0
    assert settle_usage(router, local, Usage(input_tokens=5, output_tokens=50)).cost_usd == 0.0
    # Money back (a bigger budget): paid calls resume.
    router.set_budget("s", Budget(usd=1.0))
    assert router.decide("And another.", "s", exclude=["local"]).chosen in ("big", "small")


def test_a_call_within_its_cap_records_no_overrun():
    router = _pair()
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello there.", "s", max_tokens=50)
    settlement = settle_usage(router, decision, Usage(input_tokens=decision.input_tokens[decision.chosen],
                                                      output_tokens=50))
    assert settlement.overrun_usd == 0.0 and settlement.cost_usd == pytest.approx(decision.reserved)


def test_the_worst_case_assumes_the_dearest_input_rate():
    router = Router([SONNET])
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello there.", "s", max_tokens=10)
    tokens = decision.input_tokens["sonnet"]
    assert decision.reserved == pytest.approx((tokens * 3.75 + 10 * 15.0) / 1e6)
    # A provider that wrote the whole prompt to its cache billed within the reservation.
    usage = Usage(input_tokens=tokens, output_tokens=10, cache_write_tokens=tokens)
    assert settle_usage(router, decision, usage).overrun_usd == 0.0


@pytest.mark.parametrize("report", [
    {"prompt_tokens": float("nan"), "completion_tokens": 5},
    {"prompt_tokens": 1e400, "completion_tokens": 5},
    {"prompt_tokens": 10**30, "completion_tokens": 5},
    {"prompt_tokens": 10, "completion_tokens": -5},
    {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": float("inf")}},
])
def test_a_garbage_report_is_read_as_missing_and_the_call_is_counted(report, caplog):
    router = _pair()
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello there.", "s", max_tokens=20, model="small")
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        settlement = settle_usage(router, decision, report, output_text="hello world")
    assert settlement.usage_source in ("partial", "counted") or settlement.usage.cache_read_tokens == 0
    assert settlement.cost_usd > 0 and router.budget_state("s").reserved == 0
    assert "reading it as missing" in caplog.text


def test_a_report_that_cannot_be_read_does_not_lose_the_call():
    class Broken:
        def model_dump(self):
            raise RuntimeError("schema drift")

    router = _pair()
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello there.", "s", max_tokens=20, model="small")
    settlement = settle_usage(router, decision, Broken(), output_text="hello world")
    assert settlement.usage_source == "counted" and settlement.output_tokens == 2
    assert router.budget_state("s").committed == pytest.approx(settlement.cost_usd)


def test_a_late_commit_that_overdraws_its_scope_is_an_overrun(caplog):
    from shared_core.budget import MemoryStore

    now = [1_000.0]
    router = Router(_pair().candidates, store=MemoryStore(clock=lambda: now[0]), reservation_ttl_s=10)
    router.set_budget("s", Budget(usd=0.0001))
    slow = router.decide("Hello there.", "s", max_tokens=20, model="small")
    now[0] += 11  # the slow call's hold lapses, and another call takes the money
    fast = router.decide("Hello there.", "s", max_tokens=20, model="small")
    router.settle(fast, cost=0.00009)
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        charge = router.commit(slow, cost=slow.reserved)  # within its own reservation, but it had lapsed
    assert charge.overrun_usd == pytest.approx(0.00009 + slow.reserved - 0.0001, abs=1e-12)
    assert "overrun" in caplog.text and "is overdrawn by" in caplog.text
    assert router.budget_state("s").overdrawn == pytest.approx(charge.overrun_usd, abs=1e-12)
    # Committing it again charges nothing more and reports no overrun.
    assert router.commit(slow, cost=slow.reserved).overrun_usd == 0.0


@pytest.mark.parametrize("max_tokens", [0, -1, 1.5, float("nan"), True, "100"])
def test_max_tokens_must_be_a_whole_positive_number(max_tokens):
    from shared_core import RoutingError

    with pytest.raises(RoutingError, match="max_tokens must be a whole number"):
        _pair().decide("Hello.", max_tokens=max_tokens)


def test_images_are_priced_by_the_rule_of_the_api_the_candidate_speaks():
    from test_money_langchain import png

    claude = Candidate(name="claude", input_price=3.0, output_price=15.0, prior_quality=0.5, provider="anthropic")
    gpt = Candidate(name="gpt", input_price=3.0, output_price=15.0, prior_quality=0.5, provider="openai")
    content = [{"type": "image_url", "image_url": {"url": png(1000, 1000), "detail": "low"}}]
    tokens = Router([claude, gpt]).decide([{"role": "user", "content": content}], max_tokens=1).input_tokens
    # The OpenAI-shaped block goes to Claude converted: Anthropic bills ceil(1000·1000 / 750) = 1334.
    assert tokens["claude"] - tokens["gpt"] == 1334 - 85


def test_one_image_rule_per_candidate():
    assert Candidate(name="a", input_price=1, output_price=1, provider="anthropic").image_rule == "anthropic"
    assert Candidate(name="a", input_price=1, output_price=1, provider="openai").image_rule == "openai"
    # An API without a rule of its own prices each block by its shape, wherever tokens are counted.
    assert Candidate(name="a", input_price=1, output_price=1, provider="google").image_rule is None
    assert SONNET.dearest_input_price == 3.75
