"""Re-setting a budget on every store: a changed period keeps its spend, a default never wins.

The rule (LedgerStore.set_budget): a changed period restarts now and the spend of the period
that was current stays counted; only reset=True or the new period's own roll-over zeroes it.
"""

from __future__ import annotations

import pytest
from ledger_support import ledger

from shared_core.budget import Budget, BudgetExceeded
from shared_core.candidates import Candidate
from shared_core.router import Router

DAY, HOUR = 86_400.0, 3_600.0


def spend(store, scope: str, usd: float, rid: str) -> None:
    store.reserve(rid, (scope,), usd, ttl_s=60)
    assert store.commit(rid, usd, "m") is True


def test_adding_a_daily_period_to_a_day_old_scope_keeps_its_spend(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=10))  # created "yesterday", no period
        clock.advance(DAY + 1800)
        spend(store, "acme", 9.99, "r1")  # half an hour ago
        clock.advance(1800)

        assert store.set_budget("acme", Budget(usd=10, period_s=DAY)) is True
        st = store.state("acme")
        assert (st.committed, st.requests, st.by_model) == (9.99, 1, {"m": 9.99})
        assert st.period_start == clock.now  # the new period is counted from now
        assert st.remaining == pytest.approx(0.01)
        with pytest.raises(BudgetExceeded):
            store.reserve("r2", ("acme",), 9.0, ttl_s=60)
        assert store.state("acme").reserved == 0.0

        clock.advance(DAY - 1)  # still the re-anchored period
        assert store.state("acme").committed == 9.99
        clock.advance(1)  # the new period's own roll-over
        st = store.state("acme")
        assert (st.committed, st.requests, st.by_model, st.period_start) == (0.0, 0, {}, clock.now)
        spend(store, "acme", 9.0, "r3")
        assert store.state("acme").committed == 9.0


def test_shortening_a_day_to_an_hour_keeps_the_spend_until_the_hour_is_over(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=10, period_s=DAY))
        clock.advance(5 * HOUR)
        spend(store, "acme", 9.0, "r1")  # a minute ago
        clock.advance(60)

        store.set_budget("acme", Budget(usd=10, period_s=HOUR))
        st = store.state("acme")
        assert (st.committed, st.budget.period_s, st.period_start) == (9.0, HOUR, clock.now)
        with pytest.raises(BudgetExceeded):
            store.reserve("r2", ("acme",), 9.0, ttl_s=60)
        spend(store, "acme", 1.0, "r3")  # what is left can still be spent
        assert store.state("acme").committed == 10.0

        clock.advance(HOUR - 1)
        assert store.state("acme").committed == 10.0
        clock.advance(1)  # the new hourly period rolls over on its own
        assert store.state("acme").committed == 0.0
        spend(store, "acme", 9.0, "r4")
        assert store.state("acme").committed == 9.0


def test_lengthening_and_dropping_a_period_keep_the_spend_too(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=10, period_s=HOUR))
        clock.advance(HOUR - 60)
        spend(store, "acme", 4.0, "r1")
        store.set_budget("acme", Budget(usd=10, period_s=DAY))
        clock.advance(120)  # past where the old hour would have ended
        assert store.state("acme").committed == 4.0
        store.set_budget("acme", Budget(usd=10))  # some → none
        clock.advance(10 * DAY)
        st = store.state("acme")
        assert (st.committed, st.period_start) == (4.0, clock.now - 10 * DAY)


def test_an_unchanged_period_keeps_its_start_and_spend(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=10, period_s=DAY))
        start = store.state("acme").period_start
        clock.advance(HOUR)
        spend(store, "acme", 3.0, "r1")
        store.set_budget("acme", Budget(usd=20, period_s=DAY, horizon=5))
        st = store.state("acme")
        assert (st.committed, st.period_start, st.budget.usd) == (3.0, start, 20.0)
        clock.advance(DAY - HOUR)  # the unchanged period rolls over where it always would have
        assert store.state("acme").committed == 0.0


def test_a_period_that_ended_under_the_old_budget_is_not_brought_back(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=10, period_s=HOUR))
        spend(store, "acme", 9.0, "r1")
        clock.advance(HOUR + 60)  # that hour is over: its $9 no longer counts
        store.set_budget("acme", Budget(usd=10, period_s=DAY))
        st = store.state("acme")
        assert (st.committed, st.requests, st.by_model, st.period_start) == (0.0, 0, {}, clock.now)


def test_reset_zeroes_the_period_but_keeps_open_holds_and_lambda(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=10))
        clock.advance(DAY)
        spend(store, "acme", 9.0, "r1")
        store.reserve("held", ("acme",), 0.5, ttl_s=600)
        store.adjust_lambda("acme", 1.5)
        clock.advance(60)

        assert store.set_budget("acme", Budget(usd=10, period_s=DAY), reset=True) is True
        st = store.state("acme")
        assert (st.committed, st.requests, st.by_model, st.calls_by_model) == (0.0, 0, {}, {})
        assert (st.reserved, st.lam, st.period_start) == (0.5, 1.5, clock.now)
        spend(store, "acme", 9.0, "r2")
        assert store.commit("held", 0.5, "m") is True
        assert store.state("acme").committed == 9.5

        # reset with an unchanged budget zeroes too, and restarts the period now
        clock.advance(HOUR)
        store.set_budget("acme", Budget(usd=10, period_s=DAY), reset=True)
        st = store.state("acme")
        assert (st.committed, st.period_start) == (0.0, clock.now)


def test_a_default_set_only_if_absent_never_overwrites_an_explicit_budget(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=5, period_s=HOUR))  # the explicit one lands first
        spend(store, "acme", 1.0, "r1")
        assert store.set_budget("acme", Budget(usd=100), only_if_absent=True) is False
        assert store.set_budget("acme", Budget(usd=100), reset=True, only_if_absent=True) is False
        st = store.state("acme")
        assert (st.budget, st.committed) == (Budget(usd=5, period_s=HOUR), 1.0)
        # on a scope without a budget, it creates one
        assert store.set_budget("fresh", Budget(usd=100), only_if_absent=True) is True
        assert store.state("fresh").budget == Budget(usd=100)


def test_the_routers_default_loses_to_an_explicit_budget_set_between_its_read_and_write(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        router = Router(
            [Candidate(name="m", input_price=1.0, output_price=2.0, prior_quality=0.5)],
            store=store, default_budget=Budget(usd=100),
        )
        explicit = Budget(usd=0.5, period_s=DAY)
        read = store.states

        def states_then_explicit(scopes):
            found = read(scopes)  # the router sees no budget ...
            if "acme" in scopes and read(["acme"])[0] is None:
                store.set_budget("acme", explicit)  # ... and another caller sets one right then
            return found

        store.states = states_then_explicit
        states = router._chain_states(router.scope_of("acme"))
        del store.states
        assert states[-1].budget == explicit
        assert store.state("acme").budget == explicit
        assert router.budget_state("acme").budget == explicit


def test_the_router_passes_reset_through(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        router = Router([Candidate(name="m", input_price=1.0, output_price=2.0, prior_quality=0.5)], store=store)
        router.set_budget("acme", Budget(usd=10))
        spend(store, "acme", 9.0, "r1")
        router.set_budget("acme", Budget(usd=10, period_s=DAY))
        assert router.budget_state("acme").committed == 9.0
        router.set_budget("acme", Budget(usd=10, period_s=DAY), reset=True)
        assert router.budget_state("acme").committed == 0.0
