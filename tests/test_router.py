"""The router end to end: choices, reservations, the dual pacer, nested budgets and fallbacks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shared_core import Budget, BudgetExceeded, Candidate, NoFeasibleCandidate, Router, RoutingError, UnknownScope
from shared_core.calls import acall_with_fallbacks, call_with_fallbacks, settle_usage
from shared_core.fitting import fit_router


def _cands(**kw):
    return [
        Candidate(name="big", input_price=10, output_price=30, prior_quality=0.9, **kw),
        Candidate(name="mid", input_price=1, output_price=2, prior_quality=0.7, **kw),
        Candidate(name="small", input_price=0.1, output_price=0.2, prior_quality=0.5, supports_tools=False, **kw),
    ]


@pytest.fixture(scope="module")
def replay_setup(routerbench):
    train, test = routerbench.subset("train"), routerbench.subset("test")
    ref = test.models.index("gpt-4-1106-preview")
    router = fit_router(train, "knn", candidates=train.candidates(max_output_tokens=1024))
    return router, test, float(np.nansum(test.cost[:, ref]))


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.10, 0.25])
def test_session_budget_holds_and_is_used_on_the_real_test_split(replay_setup, fraction):
    """Issue 2: replaying the test split at a fraction of all-GPT-4 cost stays within budget."""
    router, test, gpt4_cost = replay_setup
    budget = fraction * gpt4_cost
    scope = f"replay-{fraction}"
    router.set_budget(scope, Budget(usd=budget, horizon=len(test)))
    spent = []
    for i, prompt in enumerate(test.prompts):
        decision = router.decide(prompt, scope)
        actual = float(test.cost[i, test.models.index(decision.chosen)])
        spent.append(router.settle(decision, cost=actual))
    state = router.budget_state(scope)
    assert state.committed <= budget
    assert state.committed >= 0.9 * budget
    assert state.reserved == 0 and router.store.open_reservations() == 0
    assert state.committed == pytest.approx(sum(spent))
    assert sum(state.by_model.values()) == pytest.approx(state.committed)
    # Pacing spread the money: more than one model was used and GPT-4 got some of it.
    assert len(state.by_model) >= 2 and state.by_model.get("gpt-4-1106-preview", 0) > 0


def test_without_budget_the_best_quality_wins_and_cost_weight_trades_it():
    assert Router(_cands()).decide("hello").chosen == "big"
    assert Router(_cands(), cost_weight=1e6).decide("hello").chosen == "small"


def test_decision_reports_estimates_for_every_candidate():
    router = Router(_cands(), default_budget=Budget(usd=1.0, horizon=100))
    d = router.decide([{"role": "user", "content": "What is 2 + 2?"}], "s1", max_tokens=50)
    assert set(d.quality) == set(d.cost) == {"big", "mid", "small"}
    assert d.reserved == pytest.approx(router.candidate(d.chosen).worst_case_cost(d.input_tokens[d.chosen], 50))
    assert router.budget_state("s1").reserved == pytest.approx(d.reserved)
    assert d.to_dict()["model"] == d.chosen and d.scope == "s1"


def test_hard_cap_moves_to_cheaper_candidates_then_refuses():
    router = Router(_cands(), cost_weight=0.0)
    big = router.candidate("big")
    tokens = 10
    router.set_budget("s", Budget(usd=big.worst_case_cost(tokens + 20, 100) * 0.5))
    d = router.decide("x" * 40, "s", max_tokens=100)
    assert d.chosen != "big" and "big" in d.ranking
    router.release(d)
    router.set_budget("s", Budget(usd=1e-9))
    with pytest.raises(BudgetExceeded, match="no candidate fits the budget of scope 's'"):
        router.decide("hello", "s", max_tokens=100)
    assert router.budget_state("s").reserved == 0


def test_a_refusal_says_how_much_calls_in_flight_hold():
    router = Router(_cands(), cost_weight=0.0, cap_headroom=None)
    mid = router.candidate("mid")
    router.set_budget("s", Budget(usd=mid.worst_case_cost(20, 100) * 1.5))
    first = router.decide("hello", "s", max_tokens=100, exclude=["big"])
    with pytest.raises(BudgetExceeded) as refused:
        router.decide("hello", "s", max_tokens=100, exclude=["big", "small"])
    held = router.budget_state("s").reserved
    assert held == first.reserved > 0
    assert f"besides {held:.6g} USD held for calls in flight until they settle" in str(refused.value)
    router.release(first)
    assert router.decide("hello", "s", max_tokens=100, exclude=["big", "small"]).chosen == "mid"


def test_settle_twice_charges_once_and_release_returns_money():
    router = Router(_cands(), default_budget=Budget(usd=1.0))
    d = router.decide("hello", "s")
    assert router.settle(d, 10, 5) == pytest.approx(router.candidate(d.chosen).cost(10, 5))
    router.settle(d, 10, 5)
    state = router.budget_state("s")
    assert state.committed == pytest.approx(router.candidate(d.chosen).cost(10, 5)) and state.requests == 1
    d2 = router.decide("hello", "s")
    router.release(d2)
    assert router.budget_state("s").reserved == 0


def test_settle_counts_output_text_when_no_usage_is_reported():
    router = Router(_cands(), default_budget=Budget(usd=1.0))
    d = router.decide("hello", "s", model="mid")
    cost = settle_usage(router, d, output_text="one two three").cost_usd
    assert cost == pytest.approx(router.candidate("mid").cost(d.input_tokens["mid"], 3))


def test_pacer_raises_lambda_when_overspending_and_lowers_it_when_under():
    router = Router(_cands(), default_budget=Budget(usd=1.0, horizon=100))
    d = router.decide("hello", "over")
    router.settle(d, cost=0.5)  # fifty times the even share of 0.01
    d = router.decide("hello", "under")
    router.settle(d, cost=0.0)
    theta0 = router.pacer.initial
    assert router.budget_state("over").lam > theta0 > router.budget_state("under").lam


def test_nested_scopes_must_all_fit_and_all_get_charged():
    router = Router(_cands())
    router.set_budget("acme", Budget(usd=0.001))
    router.set_budget("acme/agent-7", Budget(usd=10.0))
    d = router.decide("hello", "acme/agent-7", max_tokens=100)
    # The tenant's tiny budget binds even though the agent's is large.
    assert router.candidate(d.chosen).worst_case_cost(d.input_tokens[d.chosen], 100) <= 0.001
    router.settle(d, 5, 5)
    assert router.budget_state("acme").committed == router.budget_state("acme/agent-7").committed > 0
    assert router.remaining("acme/agent-7") == pytest.approx(0.001 - router.budget_state("acme").committed)


def test_infeasible_requests_are_explained():
    router = Router(_cands(context_window=50))
    with pytest.raises(NoFeasibleCandidate, match="exceeds its context window of 50"):
        router.decide("word " * 100)
    tools = [{"name": "f", "parameters": {}}]
    assert "small" not in router.decide("hi", tools=tools).ranking
    with pytest.raises(NoFeasibleCandidate, match="excluded"):
        router.decide("hi", exclude=["big", "mid", "small"])
    with pytest.raises(KeyError, match="unknown candidate 'nope'"):
        router.decide("hi", model="nope")
    assert router.decide("hi", model="small").chosen == "small"


def test_a_capability_no_candidate_declares_is_explained_with_how_to_declare_it():
    router = Router([Candidate(name=n, input_price=1.0, output_price=2.0, prior_quality=0.5, supports_tools=False)
                     for n in ("a", "b")])
    with pytest.raises(NoFeasibleCandidate) as caught:
        router.decide("hi", tools=[{"name": "f", "parameters": {}}])
    assert "a: cannot call tools; b: cannot call tools" in str(caught.value)
    assert "Candidate(..., supports_tools=True)" in str(caught.value)
    # One that does declare it: the others are simply ruled out, with no hint.
    router = Router([*router.candidates, Candidate(name="c", input_price=1.0, output_price=2.0, prior_quality=0.5)])
    with pytest.raises(NoFeasibleCandidate) as caught:
        router.decide("hi", tools=[{"name": "f", "parameters": {}}], exclude=["c"])
    assert "supports_tools=True" not in str(caught.value)


@pytest.mark.parametrize("bad", ["", "   ", [], [{"content": "no role"}], 42])
def test_malformed_requests_are_rejected(bad):
    with pytest.raises(RoutingError):
        Router(_cands()).decide(bad)


def test_strict_mode_refuses_unknown_scopes():
    router = Router(_cands(), strict_scopes=True)
    with pytest.raises(UnknownScope, match="agent-x"):
        router.decide("hi", "agent-x")
    router.set_budget("agent-x", Budget(usd=1))
    assert router.decide("hi", "agent-x").scope == "agent-x"


@pytest.mark.parametrize(
    "bad", [{"usd": -1}, {"usd": float("nan")}, {"usd": 1, "horizon": 0}, {"usd": 1, "period_s": -5}]
)
def test_bad_budgets_are_rejected(bad):
    with pytest.raises(ValueError):
        Budget(**bad)


def test_fallback_releases_the_failed_reservation_and_tries_the_next_best():
    router = Router(_cands(), default_budget=Budget(usd=1.0), max_fallbacks=1)
    calls = []

    def call(candidate, decision):
        calls.append(candidate.name)
        if candidate.name == "big":
            raise TimeoutError("provider timed out")
        return "ok"

    result, final = call_with_fallbacks(router, router.decide("hello", "s"), call)
    assert result == "ok" and calls == ["big", "mid"] and final.failed == ("big",)
    assert router.budget_state("s").reserved == pytest.approx(final.reserved)
    router.settle(final, 5, 5)
    assert router.budget_state("s").reserved == 0

    def always_fail(candidate, decision):
        raise RuntimeError(f"{candidate.name} is down")

    with pytest.raises(RuntimeError, match="mid is down"):  # the last real error, after 1 fallback
        call_with_fallbacks(router, router.decide("hello", "s"), always_fail)
    assert router.budget_state("s").reserved == 0


async def test_async_fallback_shares_the_same_path():
    router = Router(_cands(), default_budget=Budget(usd=1.0))

    async def call(candidate, decision):
        if candidate.name != "small":
            raise ConnectionError("down")
        return candidate.name

    result, final = await acall_with_fallbacks(router, router.decide("hello", "s"), call)
    assert result == "small" and final.failed == ("big", "mid")


def test_threads_never_overspend_the_in_memory_ledger():
    router = Router(_cands(), cost_weight=0.0)
    router.set_budget("shared", Budget(usd=0.05))
    refused = []

    def worker():
        for _ in range(100):
            try:
                d = router.decide("hello there", "shared", max_tokens=200)
            except BudgetExceeded:
                refused.append(1)
                continue
            router.settle(d, d.input_tokens[d.chosen], 200)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = router.budget_state("shared")
    assert state.committed <= 0.05 and state.reserved == 0
    assert refused and state.committed > 0.05 - router.candidate("big").worst_case_cost(10, 200)


def test_weights_scale_quality_and_zero_rules_a_candidate_out():
    router = Router(_cands(), cost_weight=0.0)
    best = router.decide("What is 2 + 2?")
    weighted = router.decide("What is 2 + 2?", weights={best.chosen: 0.0})
    assert weighted.chosen != best.chosen and best.chosen not in weighted.ranking
    halved = router.decide("What is 2 + 2?", weights={best.chosen: 0.5})
    assert halved.quality[best.chosen] == pytest.approx(best.quality[best.chosen] * 0.5)
    with pytest.raises(RoutingError, match="unknown candidates"):
        router.decide("x", weights={"nope": 1.0})
    with pytest.raises(RoutingError, match=r"in \[0, 1\]"):
        router.decide("x", weights={best.chosen: 1.5})
    with pytest.raises(NoFeasibleCandidate, match="weight 0"):
        router.decide("x", weights={c.name: 0.0 for c in router.candidates})


def test_extra_input_tokens_are_priced_and_reserved():
    router = Router(_cands())
    router.set_budget("s", Budget(usd=10.0))
    plain = router.decide("What is 2 + 2?", "s", max_tokens=10, model="big")
    more = router.decide("What is 2 + 2?", "s", max_tokens=10, model="big", extra_input_tokens=2_000)
    assert more.input_tokens["big"] == plain.input_tokens["big"] + 2_000
    assert more.reserved == pytest.approx(
        router.candidate("big").worst_case_cost(plain.input_tokens["big"] + 2_000, 10)
    )
    with pytest.raises(RoutingError, match="extra_input_tokens"):
        router.decide("x", extra_input_tokens=-1)


class _CountingStore:
    """Counts the ledger calls a router makes (a mixin over a real store)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def states(self, scopes):
        self.calls.append("states")
        return super().states(scopes)

    def _reserve(self, *args):
        self.calls.append("reserve")
        return super()._reserve(*args)

    def _commit_books(self, *args):
        self.calls.append("commit_books")
        return super()._commit_books(*args)

    def _adjust_lambda(self, *args):
        self.calls.append("adjust_lambda")
        return super()._adjust_lambda(*args)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_settled_call_is_one_ledger_step_that_paces_and_reports_what_is_left(kind, tmp_path):
    """A decision reads the books and holds; the settle commits, moves λ and reads what is left in one step."""
    from shared_core.stores import MemoryStore, SQLiteStore

    base = {"memory": MemoryStore, "sqlite": SQLiteStore}[kind]
    store = type("Counting", (_CountingStore, base), {})(*([tmp_path / "l.db"] if kind == "sqlite" else []))
    router = Router(_cands(), store=store)
    router.set_budget("acme", Budget(usd=1.0, horizon=4))
    router.set_budget("acme/bot", Budget(usd=0.5, horizon=5))
    decision = router.decide("What is 2 + 2?", "acme/bot", max_tokens=50)
    assert store.calls == ["states", "reserve"]
    paced = [router.pacer.update(s, 0.0011) for s in router.store.states(("acme", "acme/bot"))]
    store.calls.clear()
    settlement = settle_usage(router, decision, {"input_tokens": 20, "output_tokens": 30})
    assert store.calls == ["commit_books"]
    books = router.store.states(("acme", "acme/bot"))
    assert settlement.remaining_usd == min(s.remaining for s in books) > 0
    # λ moved in both scopes, each from its own books before the commit.
    assert settlement.cost_usd == 0.0011 and [s.lam for s in books] == paced and paced[0] != paced[1]


class _TwoStepMemory:
    """A memory ledger that commits as a store without a one-step commit_books does (the base
    default: read, commit, store λ, read), with `_adjust_lambda` replaced by `fail_lambda`."""

    fail_lambda = None

    def _commit_books(self, reservation_id, nanos, model, scopes, pace):
        from shared_core.stores.base import books_around

        return books_around(self, lambda: self._commit(reservation_id, nanos, model), scopes, pace)

    def _adjust_lambda(self, scope, value):
        if self.fail_lambda is not None:
            raise self.fail_lambda(f"scope {scope!r}: the λ write failed")
        return super()._adjust_lambda(scope, value)


@pytest.mark.parametrize("error", ["UnknownScope", "LedgerUnavailable"])
def test_a_lambda_write_that_fails_after_the_commit_neither_charges_again_nor_hides_the_overrun(error, caplog):
    """A scope idled out (UnknownScope, a KeyError) or a ledger gone between the commit and the λ write:
    the commit stands, once, with its overrun; λ stays where it was (a price, not money)."""
    import shared_core.errors as errors
    from shared_core.stores import MemoryStore

    store = type("TwoStep", (_TwoStepMemory, MemoryStore), {})()
    router = Router(_cands(), store=store)
    router.set_budget("acme", Budget(usd=1.0, horizon=10))
    decision = router.decide("What is 2 + 2?", "acme", max_tokens=10)
    store.fail_lambda = getattr(errors, error)
    with caplog.at_level("WARNING", logger="omniroute"):
        charge = router.commit(decision, cost=0.05)
    state = router.budget_state("acme")
    assert (state.committed, state.requests, state.reserved, state.lam) == (0.05, 1, 0.0, None)
    assert charge.overrun_usd == pytest.approx(0.05 - decision.reserved) and charge.remaining_usd == 0.95
    assert "overrun" in caplog.text
    assert ("could not store λ" in caplog.text) == (error == "LedgerUnavailable")


def test_what_is_left_counts_a_budget_an_enclosing_scope_gained_while_the_call_ran():
    router = Router(_cands(), cost_weight=0.0)
    router.set_budget("acme/bot", Budget(usd=1.0))
    decision = router.decide("What is 2 + 2?", "acme/bot", max_tokens=10)
    router.set_budget("acme", Budget(usd=0.01))  # set by another process while the call runs
    settlement = settle_usage(router, decision, {"input_tokens": 10, "output_tokens": 10})
    assert decision.scopes == ("acme/bot",)
    assert settlement.remaining_usd == router.remaining("acme/bot") == 0.01  # not charged, but the tighter cap
    assert router.budget_state("acme").committed == 0.0 and router.budget_state("acme").lam is None
