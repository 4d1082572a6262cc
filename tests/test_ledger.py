"""The ledger's contract, run unchanged on every store: memory, SQLite, Redis and PostgreSQL."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from ledger_support import DURABLE, ledger, redis_admin, store_url

from shared_core.budget import MAX_USD, Budget, BudgetExceeded, ScopeState, UnknownScope, to_nanos
from shared_core.candidates import Candidate
from shared_core.cli import main
from shared_core.pacing import DualPacer, PaceUpdate
from shared_core.router import Router
from shared_core.stores import SQLiteStore, open_store

CHAIN = ("acme", "acme/bot")


@pytest.fixture
def store(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as s:
        s.set_budget("acme", Budget(usd=1.0))
        s.set_budget("acme/bot", Budget(usd=0.5))
        yield s


def test_reserve_holds_in_every_scope_and_commit_charges_the_actual_cost(store):
    store.reserve("r1", CHAIN, 0.3, ttl_s=60)
    assert [store.state(s).reserved for s in CHAIN] == [0.3, 0.3]
    assert [store.state(s).remaining for s in CHAIN] == [pytest.approx(0.7), pytest.approx(0.2)]

    assert store.commit("r1", 0.125, model="gpt-4o") is True
    for s in CHAIN:
        st = store.state(s)
        assert (st.committed, st.reserved, st.requests) == (0.125, 0.0, 1)
        assert st.by_model == {"gpt-4o": 0.125} and st.calls_by_model == {"gpt-4o": 1}
    assert store.open_reservations() == 0


def test_a_reservation_that_does_not_fit_one_scope_holds_nothing_anywhere(store):
    store.reserve("big", ("acme",), 0.9, ttl_s=60)
    with pytest.raises(BudgetExceeded, match="'acme'") as info:
        store.reserve("r", CHAIN, 0.2, ttl_s=60)
    assert info.value.scope == "acme" and info.value.remaining == pytest.approx(0.1)
    assert store.state("acme/bot").reserved == 0.0
    assert store.state("acme").reserved == 0.9
    assert store.open_reservations() == 1


def test_a_repeated_commit_charges_once(store):
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    assert store.commit("r", 0.2, "m") is True
    assert store.commit("r", 0.2, "m") is False
    assert store.commit("r", 0.25, "m") is False
    assert store.state("acme").committed == 0.2 and store.state("acme").requests == 1


def test_release_returns_the_money_once(store):
    store.reserve("r", CHAIN, 0.4, ttl_s=60)
    assert store.release("r") is True
    assert store.release("r") is False
    st = store.state("acme/bot")
    assert (st.reserved, st.committed, st.released) == (0.0, 0.0, 1)
    store.reserve("r2", CHAIN, 0.5, ttl_s=60)  # all of the child's budget is free again


def test_an_expired_reservation_returns_its_money_and_a_late_commit_counts_once(store, clock):
    store.reserve("slow", CHAIN, 0.5, ttl_s=30)
    clock.advance(29.9)
    assert store.open_reservations() == 1
    clock.advance(0.1)
    assert store.open_reservations() == 0
    st = store.state("acme/bot")
    assert (st.reserved, st.expired) == (0.0, 1)

    store.reserve("next", CHAIN, 0.5, ttl_s=30)  # the crashed worker's money is available again
    assert store.commit("slow", 0.4, "m") is True  # the worker was only slow: its spend is recorded
    assert store.commit("slow", 0.4, "m") is False
    assert store.state("acme/bot").committed == 0.4
    assert store.state("acme/bot").reserved == 0.5


def test_commit_after_release_records_the_spend_once(store):
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    store.release("r")
    assert store.commit("r", 0.1, "m") is True
    assert store.commit("r", 0.1, "m") is False
    assert store.state("acme").committed == 0.1 and store.state("acme").reserved == 0.0


def test_unknown_reservations(store):
    with pytest.raises(KeyError, match="unknown reservation 'nope'"):
        store.commit("nope", 0.1)
    assert store.release("nope") is False


def test_retrying_a_reservation_holds_once_and_reusing_its_id_is_refused(store):
    store.reserve("r", CHAIN, 0.2, ttl_s=60)
    store.reserve("r", CHAIN, 0.2, ttl_s=60)  # a retry after a lost reply
    assert store.state("acme").reserved == 0.2
    with pytest.raises(ValueError, match="already used"):
        store.reserve("r", CHAIN, 0.3, ttl_s=60)
    store.commit("r", 0.1)
    with pytest.raises(ValueError, match="already used"):
        store.reserve("r", CHAIN, 0.2, ttl_s=60)


def test_a_reservation_naming_an_unknown_scope_holds_nothing(store):
    with pytest.raises(UnknownScope, match="'acme/ghost' has no budget"):
        store.reserve("r", ("acme", "acme/ghost"), 0.1, ttl_s=60)
    assert store.state("acme").reserved == 0.0
    assert store.state("acme/ghost") is None


@pytest.mark.parametrize("scope", ["acme ", " ", "acme/ bot"])
def test_a_scope_name_padded_with_whitespace_is_refused_by_every_store(store, scope):
    # Otherwise "acme " is a second tenant that prints as "acme" in every report.
    with pytest.raises(ValueError, match="whitespace"):
        store.set_budget(scope, Budget(usd=1.0))
    assert store.scopes() == ["acme", "acme/bot"]


def test_a_periodic_budget_resets_at_each_period(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("daily", Budget(usd=1.0, period_s=100))
        start = store.state("daily").period_start
        store.reserve("a", ("daily",), 0.8, ttl_s=1000)
        store.commit("a", 0.8, "m")
        store.reserve("held", ("daily",), 0.1, ttl_s=1000)
        with pytest.raises(BudgetExceeded):
            store.reserve("b", ("daily",), 0.3, ttl_s=1000)

        clock.advance(250)  # two and a half periods later
        st = store.state("daily")
        assert (st.committed, st.requests, st.by_model) == (0.0, 0, {})
        assert st.period_start == start + 200
        assert st.reserved == 0.1  # money held across the boundary stays held
        store.reserve("b", ("daily",), 0.9, ttl_s=1000)
        store.commit("held", 0.05, "m")  # a commit lands in the period it happens in
        assert store.state("daily").committed == 0.05


def test_changing_a_budget_keeps_what_was_spent(store):
    store.reserve("r", CHAIN, 0.5, ttl_s=60)
    store.commit("r", 0.5)
    with pytest.raises(BudgetExceeded):
        store.reserve("r2", CHAIN, 0.1, ttl_s=60)
    store.set_budget("acme/bot", Budget(usd=2.0, horizon=10))
    st = store.state("acme/bot")
    assert (st.budget.usd, st.budget.horizon, st.committed, st.requests) == (2.0, 10, 0.5, 1)
    store.reserve("r2", CHAIN, 0.5, ttl_s=60)


def test_lambda_is_kept_per_scope(store):
    assert store.state("acme").lam is None
    store.adjust_lambda("acme", 2.75)
    assert store.state("acme").lam == 2.75 and store.state("acme/bot").lam is None
    with pytest.raises(UnknownScope):
        store.adjust_lambda("ghost", 1.0)


def test_states_reads_any_iterable_of_names_once_and_refuses_a_bare_string(store):
    store.reserve("r1", CHAIN, 0.25, ttl_s=60)
    expected = store.states(list(CHAIN))
    assert [s.reserved for s in expected] == [0.25, 0.25]
    assert store.states(name for name in CHAIN) == expected  # a generator is read once, not twice
    assert store.states(iter(["acme/bot", "ghost"])) == [expected[1], None]
    with pytest.raises(TypeError, match="not the str 'acme'"):
        store.states("acme")
    with pytest.raises(TypeError, match="not the bytes"):
        store.states(b"acme")


def test_report_lists_a_scope_and_the_scopes_nested_in_it(store):
    store.set_budget("acme2", Budget(usd=1.0))
    assert store.scopes() == ["acme", "acme/bot", "acme2"]
    assert [s.scope for s in store.report("acme")] == ["acme", "acme/bot"]
    assert [s.scope for s in store.report()] == ["acme", "acme/bot", "acme2"]


@pytest.mark.slow
def test_a_thousand_commits_add_up_exactly(kind, tmp_path):
    with ledger(kind, tmp_path) as store:
        store.set_budget("big", Budget(usd=MAX_USD))
        costs = [0.1, 0.2, 0.3, 1e-9, 0.000123] * 200
        for i, c in enumerate(costs):
            store.reserve(f"r{i}", ("big",), c, ttl_s=60)
            store.commit(f"r{i}", c, "m")
        assert sum(costs) != 120.0246002  # a float running sum drifts; the ledger must not
        st = store.state("big")
        assert st.committed == 120.0246002 and st.by_model["m"] == 120.0246002
        assert to_nanos(st.committed) == sum(to_nanos(c) for c in costs)


def test_the_largest_budget_is_held_to_the_nano_dollar(kind, tmp_path):
    with ledger(kind, tmp_path) as store:
        store.set_budget("big", Budget(usd=MAX_USD))
        store.reserve("r", ("big",), 2_000_000.75, ttl_s=60)
        left = MAX_USD - 2_000_000.75
        with pytest.raises(BudgetExceeded):
            store.reserve("r2", ("big",), left + 1e-9, ttl_s=60)
        store.reserve("r3", ("big",), left, ttl_s=60)
        store.commit("r", 2_000_000.75)
        store.commit("r3", left - 1e-9)
        assert to_nanos(store.state("big").committed) == 2**51 - 1
    with pytest.raises(ValueError, match="exceeds the largest amount"):
        Budget(usd=MAX_USD + 1e-3)


@pytest.mark.parametrize("kind", DURABLE)
def test_a_durable_store_keeps_everything_across_connections(kind, tmp_path):
    with store_url(kind, tmp_path) as url:
        first = open_store(url)
        first.set_budget("acme", Budget(usd=1.0, horizon=100, period_s=3600))
        first.reserve("done", ("acme",), 0.5, ttl_s=60)
        first.commit("done", 0.25, "m")
        first.reserve("open", ("acme",), 0.5, ttl_s=60)
        first.adjust_lambda("acme", 1.5)
        before = first.state("acme")
        first.close()

        second = open_store(url)
        assert second.state("acme") == before
        assert second.commit("done", 0.25, "m") is False
        assert second.commit("open", 0.125, "m") is True
        assert second.state("acme").committed == 0.375
        second.close()


def test_finished_reservations_are_forgotten_after_the_retention(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock, retention_s=100) as store:
        store.set_budget("acme", Budget(usd=1.0))
        store.reserve("r", ("acme",), 0.5, ttl_s=10)
        store.commit("r", 0.5)
        clock.advance(99)
        assert store.commit("r", 0.5) is False
        clock.advance(2)
        store.open_reservations()  # any operation forgets what is past retention
        with pytest.raises(KeyError, match="unknown reservation"):
            store.commit("r", 0.5)
        assert store.state("acme").committed == 0.5


def test_a_router_opens_its_ledger_from_a_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'router.db'}"
    router = Router([Candidate(name="m", input_price=1.0, output_price=2.0, prior_quality=0.5)], store=url)
    assert isinstance(router.store, SQLiteStore)
    router.set_budget("acme", Budget(usd=1.0))
    decision = router.decide("hello there", "acme")
    cost = router.settle(decision, output_tokens=10)
    router.store.close()

    reopened = open_store(url)
    st = reopened.state("acme")
    assert st.committed == pytest.approx(cost, abs=1e-9) and math.isclose(st.by_model["m"], st.committed)
    reopened.close()


@pytest.mark.parametrize("kind", DURABLE)  # each command opens the store anew
def test_the_budget_command_sets_budgets_and_reports_spend_per_scope_and_model(kind, tmp_path, capsys):
    with store_url(kind, tmp_path) as url:
        assert main(["budget", "set", "acme", "--usd", "50", "--period-s", "86400", "--create", "--store", url]) == 0
        assert main(["budget", "set", "acme/bot", "--usd", "5", "--horizon", "100", "--store", url]) == 0
        store = open_store(url)
        for i, (model, cost) in enumerate([("gpt-4o", 0.25), ("gpt-4o-mini", 0.0125), ("gpt-4o", 0.5)]):
            store.reserve(f"r{i}", CHAIN, 1.0, ttl_s=60)
            store.commit(f"r{i}", cost, model)
        store.reserve("open", CHAIN, 1.0, ttl_s=60)
        store.close()
        capsys.readouterr()

        assert main(["budget", "show", "acme/bot", "--json", "--store", url]) == 0
        (bot,) = json.loads(capsys.readouterr().out)
        assert bot["committed_usd"] == 0.7625 and bot["reserved_usd"] == 1.0 and bot["requests"] == 3
        assert bot["budget"] == {"usd": 5.0, "horizon": 100, "horizon_s": None, "period_s": None}
        assert bot["by_model"] == {"gpt-4o": {"usd": 0.75, "calls": 2}, "gpt-4o-mini": {"usd": 0.0125, "calls": 1}}

        assert main(["budget", "show", "--store", url]) == 0
        lines = capsys.readouterr().out.splitlines()
        acme = next(line for line in lines if line.startswith("acme "))
        assert acme.split()[1:7] == ["50.000000", "86400s", "-", "0.762500", "1.000000", "48.237500"]
        bot = next(line for line in lines if line.startswith("acme/bot "))
        assert bot.split()[1:5] == ["5.000000", "-", "100", "req"]  # no period; paced over 100 requests
        assert sum(line.split()[0] == "gpt-4o" for line in lines) == 2  # under acme and under acme/bot

        assert main(["budget", "show", "ghost", "--store", url]) == 2
        assert "scope 'ghost' has no budget" in capsys.readouterr().err


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:1/0", "Redis ledger at redis://127.0.0.1:1/0 is unreachable"),
    ("postgresql://postgres@127.0.0.1:1/test", "PostgreSQL ledger at postgresql://127.0.0.1:1/test is unreachable"),
])
def test_the_budget_command_reports_an_unreachable_store(url, shown, capsys):
    assert main(["budget", "show", "--store", url]) == 1
    assert shown in capsys.readouterr().err


# ----------------------------------------------------------------- holds of 0 USD, overdrawn scopes
def _overdraw_the_bot(store, clock) -> None:
    """Spend 0.75 USD in acme/bot (budget 0.5): a late commit of a lapsed hold records it all."""
    store.reserve("slow", CHAIN, 0.5, ttl_s=10)
    clock.advance(10)
    store.reserve("fast", CHAIN, 0.25, ttl_s=60)
    store.commit("fast", 0.25, "m")
    store.commit("slow", 0.5, "m")  # the provider billed it after all: the money was spent


def test_a_zero_hold_in_an_overdrawn_scope_is_a_real_hold(store, clock):
    _overdraw_the_bot(store, clock)
    st = store.state("acme/bot")
    assert (st.committed, st.reserved, st.overdrawn, st.remaining) == (0.75, 0.0, 0.25, 0.0)
    with pytest.raises(BudgetExceeded, match="'acme/bot'"):
        store.reserve("paid", CHAIN, 1e-9, ttl_s=60)

    store.reserve("free", CHAIN, 0.0, ttl_s=60)  # a $0 local model still gets its hold
    store.reserve("free", CHAIN, 0.0, ttl_s=60)  # a retry holds once
    assert store.open_reservations() == 1
    with pytest.raises(ValueError, match="already used"):
        store.reserve("free", CHAIN, 0.1, ttl_s=60)
    assert store.commit("free", 0.0, "local") is True
    assert store.commit("free", 0.0, "local") is False
    st = store.state("acme/bot")
    assert (st.committed, st.reserved, st.requests) == (0.75, 0.0, 3)
    assert st.by_model == {"m": 0.75, "local": 0.0} and st.calls_by_model == {"m": 2, "local": 1}

    store.reserve("dropped", CHAIN, 0.0, ttl_s=60)
    assert store.release("dropped") is True
    assert store.release("dropped") is False
    assert store.state("acme/bot").released == 1

    store.reserve("lapsing", CHAIN, 0.0, ttl_s=30)
    clock.advance(29.9)
    assert store.open_reservations() == 1
    clock.advance(0.1)
    assert store.open_reservations() == 0
    st = store.state("acme/bot")
    assert (st.reserved, st.expired, st.overdrawn) == (0.0, 2, 0.25)  # "slow" and "lapsing"
    assert store.commit("lapsing", 0.0, "local") is True  # a late commit of 0 still counts the request
    assert store.state("acme/bot").requests == 4
    assert store.state("acme").committed == 0.75  # the parent saw every commit, and no more


def test_a_zero_hold_fits_an_exhausted_scope_and_one_whose_holds_pass_a_lowered_budget(store):
    store.reserve("all", CHAIN, 0.5, ttl_s=60)  # acme/bot has nothing left
    store.reserve("z1", CHAIN, 0.0, ttl_s=60)
    store.set_budget("acme/bot", Budget(usd=0.25))  # now it holds more than its budget
    st = store.state("acme/bot")
    assert (st.reserved, st.remaining, st.overdrawn) == (0.5, 0.0, 0.0)  # held, not spent
    with pytest.raises(BudgetExceeded):
        store.reserve("r", CHAIN, 1e-9, ttl_s=60)
    store.reserve("z2", CHAIN, 0.0, ttl_s=60)
    assert store.open_reservations() == 3
    assert store.commit("z2", 0.0) is True and store.release("z1") is True and store.release("all") is True
    assert store.state("acme/bot").remaining == 0.25


def test_a_zero_hold_naming_an_unknown_scope_is_still_refused(store):
    with pytest.raises(UnknownScope, match="'acme/ghost'"):
        store.reserve("z", ("acme", "acme/ghost"), 0.0, ttl_s=60)
    assert store.open_reservations() == 0


def test_the_ledger_keeps_working_after_zero_holds_lapse(store, clock):
    # On Redis, returning a lapsed hold of 0 once sent HINCRBY "-0", which Redis refuses; the
    # sweep runs first in every script, so every later operation on the prefix failed.
    for i in range(3):
        store.reserve(f"z{i}", CHAIN, 0.0, ttl_s=5)
    store.commit("z1", 0.0, "local")
    store.release("z2")
    clock.advance(5)  # z0 lapses
    assert store.open_reservations() == 0
    assert store.state("acme/bot").expired == 1
    store.reserve("r", CHAIN, 0.3, ttl_s=5)
    store.reserve("z3", CHAIN, 0.0, ttl_s=5)
    assert store.commit("r", 0.2, "m") is True
    assert store.release("z3") is True
    store.reserve("z4", CHAIN, 0.0, ttl_s=5)
    clock.advance(5)  # z4 lapses, and the sweep of each call below returns it
    store.set_budget("acme/bot", Budget(usd=0.6))
    store.adjust_lambda("acme/bot", 0.5)
    assert [s.scope for s in store.report()] == list(CHAIN)
    assert store.commit("z0", 0.0) is True  # late, after the lapse
    store.reserve("r2", CHAIN, 0.4, ttl_s=5)
    st = store.state("acme/bot")
    assert (st.committed, st.reserved, st.requests, st.released, st.expired) == (0.2, 0.4, 3, 2, 2)
    assert st.remaining == 0.0 and st.overdrawn == 0.0


def test_a_redis_prefix_keeps_integer_books_after_zero_holds(tmp_path, clock):
    with ledger("redis", tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=1.0))
        for rid in ("lapses", "committed", "released", "late"):
            store.reserve(rid, ("acme",), 0.0, ttl_s=5)
        store.commit("committed", 0.0, "local")
        store.release("released")
        clock.advance(5)
        assert store.open_reservations() == 0
        store.commit("late", 0.0, "local")
        admin = redis_admin()
        try:
            books = admin.hgetall(store.prefix + "scope:acme")
            spend = admin.hgetall(store.prefix + "spend:acme")
            held = admin.hget(store.prefix + "hold:lapses", "amount")
        finally:
            admin.close()
        fields = ("committed", "reserved", "requests", "released", "expired")
        assert [books[f] for f in fields] == ["0", "0", "2", "1", "2"]
        assert spend == {"local": "0"} and held == "0"


def test_committing_zero_records_a_free_request(store, clock):
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    assert store.commit("r", 0.0, "local") is True  # the call turned out to cost nothing
    assert store.commit("r", 0.0, "local") is False
    for s in CHAIN:
        st = store.state(s)
        assert (st.committed, st.reserved, st.requests, st.overdrawn) == (0.0, 0.0, 1, 0.0)
        assert st.by_model == {"local": 0.0} and st.calls_by_model == {"local": 1}
    store.reserve("released", CHAIN, 0.1, ttl_s=60)
    store.release("released")
    assert store.commit("released", 0.0) is True  # after a release, without a model
    store.reserve("lapsed", CHAIN, 0.1, ttl_s=5)
    clock.advance(5)
    assert store.commit("lapsed", 0.0, "local") is True
    st = store.state("acme/bot")
    assert (st.committed, st.requests, st.remaining, st.calls_by_model) == (0.0, 3, 0.5, {"local": 2})


@pytest.mark.parametrize("how", ["late commit of a lapsed hold", "commit larger than the hold"])
def test_an_overdrawn_scope_shows_by_how_much_and_takes_only_zero_holds(kind, tmp_path, clock, how):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("solo", Budget(usd=1.0))
        assert store.state("solo").overdrawn == 0.0
        if how == "late commit of a lapsed hold":
            store.reserve("slow", ("solo",), 0.5, ttl_s=10)
            clock.advance(10)
            store.reserve("next", ("solo",), 1.0, ttl_s=60)
            store.commit("next", 1.0, "m")
            assert store.state("solo").overdrawn == 0.0  # all of it spent, none beyond
            store.commit("slow", 0.5, "m")
        else:
            store.reserve("small", ("solo",), 0.25, ttl_s=60)
            store.commit("small", 1.5, "m")  # the provider billed more than was held
        st = store.state("solo")
        assert (st.committed, st.reserved, st.overdrawn, st.remaining) == (1.5, 0.0, 0.5, 0.0)
        with pytest.raises(BudgetExceeded, match="'solo'") as info:
            store.reserve("paid", ("solo",), 1e-9, ttl_s=60)
        assert info.value.scope == "solo" and info.value.remaining == 0.0
        store.reserve("free", ("solo",), 0.0, ttl_s=60)
        assert store.open_reservations() == 1
        assert store.state("solo").overdrawn == 0.5


def test_an_overdrawn_child_refuses_for_the_whole_chain(store, clock):
    _overdraw_the_bot(store, clock)
    with pytest.raises(BudgetExceeded, match="'acme/bot'"):
        store.reserve("r", CHAIN, 0.1, ttl_s=60)
    assert store.state("acme").reserved == 0.0 and store.state("acme").overdrawn == 0.0
    store.reserve("r", ("acme",), 0.25, ttl_s=60)  # the parent alone still has room


def test_overdrawn_is_exact_to_the_nano_dollar(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("tiny", Budget(usd=0.1))
        for rid, cost in (("a", 0.1), ("b", 0.2)):
            store.reserve(rid, ("tiny",), 0.0, ttl_s=60)
            store.commit(rid, cost)  # a $0 hold billed after all
        st = store.state("tiny")
        assert st.overdrawn == 0.2 and to_nanos(st.overdrawn) == 200_000_000  # 0.3 - 0.1 != 0.2 in floats
        store.reserve("c", ("tiny",), 0.0, ttl_s=60)
        store.commit("c", 1e-9)
        assert to_nanos(store.state("tiny").overdrawn) == 200_000_001


def test_a_periodic_budget_is_no_longer_overdrawn_in_its_next_period(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("daily", Budget(usd=1.0, period_s=100))
        store.reserve("a", ("daily",), 0.5, ttl_s=1000)
        store.commit("a", 1.25, "m")
        store.reserve("free", ("daily",), 0.0, ttl_s=1000)  # held across the boundary
        st = store.state("daily")
        assert (st.overdrawn, st.remaining) == (0.25, 0.0)
        with pytest.raises(BudgetExceeded):
            store.reserve("b", ("daily",), 0.5, ttl_s=1000)

        clock.advance(100)
        st = store.state("daily")
        assert (st.committed, st.overdrawn, st.remaining, st.reserved) == (0.0, 0.0, 1.0, 0.0)
        store.reserve("b", ("daily",), 1.0, ttl_s=1000)
        assert store.commit("free", 0.0, "local") is True
        assert store.state("daily").overdrawn == 0.0


def test_a_scope_state_computes_overdrawn_in_whole_nano_dollars():
    budget = Budget(usd=0.1)
    assert ScopeState("s", budget, committed=0.3).overdrawn == 0.2  # floats: 0.19999999999999998
    assert ScopeState("s", budget, committed=0.1, reserved=0.5).overdrawn == 0.0  # holds are not spend
    assert ScopeState("s", budget, committed=0.05).overdrawn == 0.0
    st = ScopeState("s", Budget(usd=MAX_USD), committed=MAX_USD)
    assert (st.overdrawn, st.remaining) == (0.0, 0.0)


def test_commit_books_reads_the_books_around_the_commit_and_moves_lambda(store, clock):
    store.reserve("other", CHAIN, 0.1, ttl_s=60)
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    seen = []

    def pace(state):
        seen.append((state.scope, state.committed, state.reserved))
        return {"acme": 1.5, "acme/bot": None}[state.scope]

    books = store.commit_books("r", 0.125, "m", scopes=("acme", "ghost", "acme/bot"), pace=pace)
    assert books.charged is True
    assert [s.scope for s in books.before] == [s.scope for s in books.after] == list(CHAIN)  # "ghost" has no budget
    assert [(s.committed, s.reserved, s.requests) for s in books.before] == [(0.0, pytest.approx(0.4), 0)] * 2
    assert seen == [("acme", 0.0, pytest.approx(0.4)), ("acme/bot", 0.0, pytest.approx(0.4))]
    after = {s.scope: s for s in books.after}
    assert (after["acme"].committed, after["acme"].reserved, after["acme"].lam) == (0.125, pytest.approx(0.1), 1.5)
    assert after["acme/bot"].lam is None and after["acme/bot"].by_model == {"m": 0.125}
    for scope in CHAIN:  # what it reported is what the ledger now holds
        assert store.state(scope) == after[scope]


def test_commit_books_in_a_new_period_reports_and_keeps_only_the_new_periods_spend(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=1.0, period_s=3600))
        store.set_budget("acme/bot", Budget(usd=0.5))
        store.reserve("old", CHAIN, 0.1, ttl_s=7200)
        store.commit("old", 0.1, "a")
        store.reserve("r", CHAIN, 0.2, ttl_s=7200)
        clock.advance(3601)  # the hold outlives acme's hour: its commit is the new period's spend
        books = store.commit_books("r", 0.05, "b", scopes=CHAIN, pace=lambda state: 0.5)
        before, after = ({s.scope: s for s in side} for side in (books.before, books.after))
        assert (before["acme"].committed, before["acme"].by_model) == (0.0, {})
        assert (after["acme"].committed, after["acme"].by_model, after["acme"].lam) == (0.05, {"b": 0.05}, 0.5)
        assert after["acme/bot"].by_model == {"a": 0.1, "b": 0.05}
        for scope in CHAIN:  # what it reported is what the ledger now holds
            assert store.state(scope) == after[scope]


def test_commit_books_of_a_hold_on_scopes_it_was_not_asked_about_reports_the_ledgers_books(store):
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    books = store.commit_books("r", 0.125, "m", scopes=("acme",), pace=lambda state: 0.25)
    assert [s.scope for s in books.after] == ["acme"]
    assert books.after[0] == store.state("acme") and books.after[0].committed == 0.125
    assert (store.state("acme/bot").committed, store.state("acme/bot").reserved) == (0.125, 0.0)


def test_a_lambda_the_pacer_leaves_where_it_was_is_not_written_again(store, kind, monkeypatch):
    writes: list[str] = []
    if kind == "redis":  # λ takes a script call of its own there: the one to save
        run = store._run
        monkeypatch.setattr(store, "_run", lambda script, *a: (writes.append(script), run(script, *a))[1])
    for rid, theta in (("a", 0.0), ("b", 0.0), ("c", 0.5), ("d", 0.5)):
        store.reserve(rid, CHAIN, 0.01, ttl_s=60)
        books = store.commit_books(rid, 0.01, "m", scopes=CHAIN, pace=lambda state, t=theta: t)
        assert [s.lam for s in books.after] == [theta, theta] == [s.lam for s in store.states(CHAIN)]
    if kind == "redis":
        assert writes.count("lambda") == 2  # 0.0 over None, 0.5 over 0.0; never the same value again


def test_commit_books_of_a_repeat_charges_nothing_and_leaves_lambda(store):
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    store.commit_books("r", 0.2, "m", scopes=CHAIN, pace=lambda state: 2.0)
    again = store.commit_books("r", 0.2, "m", scopes=CHAIN, pace=lambda state: 9.0)
    assert again.charged is False and again.before == again.after
    assert [(s.committed, s.requests, s.lam) for s in again.after] == [(0.2, 1, 2.0)] * 2
    with pytest.raises(KeyError, match="unknown reservation 'nope'"):
        store.commit_books("nope", 0.1, scopes=CHAIN)


@pytest.mark.parametrize("theta", [math.nan, math.inf])
def test_commit_books_with_a_pace_that_fails_records_nothing_where_it_commits_in_one_step(store, kind, theta):
    store.reserve("r", CHAIN, 0.3, ttl_s=60)
    with pytest.raises(ValueError, match="lambda must be finite"):
        store.commit_books("r", 0.2, "m", scopes=CHAIN, pace=lambda state: theta)
    if kind in ("memory", "sqlite"):  # one atomic step: the commit did not happen either
        assert [(s.committed, s.reserved, s.lam) for s in store.states(CHAIN)] == [(0.0, 0.3, None)] * 2
    # Everywhere the money is committed at most once, whatever a retry does.
    store.commit_books("r", 0.2, "m", scopes=CHAIN)
    assert store.state("acme").committed == 0.2 and store.state("acme").requests == 1


def test_states_of_more_scopes_than_one_query_binds(kind, tmp_path, monkeypatch):
    import sqlite3

    from shared_core.stores import sqlite

    # SQLite builds differ in how many variables one statement binds (999 before 3.32): run under a low limit.
    connect = sqlite.SQLiteStore._connect

    def limited(self):
        conn = connect(self)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, sqlite._NAMES_PER_QUERY + 100)
        return conn

    monkeypatch.setattr(sqlite.SQLiteStore, "_connect", limited)
    names = [f"t/{i}" for i in range(2 * sqlite._NAMES_PER_QUERY + 17)]
    with ledger(kind, tmp_path) as store:
        for i, name in enumerate(names):
            store.set_budget(name, Budget(usd=i + 1))
        asked = [names[-1], "t/none", *names, names[0]]
        found = store.states(asked)
        assert [s and s.scope for s in found] == [names[-1], None, *names, names[0]]
        assert [s.budget.usd for s in found[2:-1]] == [i + 1 for i in range(len(names))]
        assert len(store.report("t")) == len(names)


def test_reserve_many_makes_or_refuses_each_hold_on_its_own_in_order(store):
    """What a batch of decisions sends in one ledger call (one pipelined round trip to Redis): each
    hold made or refused as `reserve` would, later ones seeing the earlier ones' money."""
    store.reserve("taken", CHAIN, 0.1, ttl_s=60)
    outcomes = store.reserve_many([
        ("a", CHAIN, 0.25, 60),
        ("b", CHAIN, 0.25, 60),  # acme/bot has 0.4 left after "a": refused
        ("c", ("acme", "nowhere"), 0.01, 60),
        ("taken", CHAIN, 0.2, 60),  # an id in use, with another amount
        ("d", ("acme",), 0.5, 60),
        ("taken", CHAIN, 0.1, 60),  # the same hold again: a retry, made once
    ])
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType", "BudgetExceeded", "UnknownScope", "ValueError", "NoneType", "NoneType"]
    assert outcomes[1].scope == "acme/bot" and outcomes[1].remaining == pytest.approx(0.15)
    assert "nowhere" in str(outcomes[2]) and "already used" in str(outcomes[3])
    assert [store.state(s).reserved for s in CHAIN] == [pytest.approx(0.85), pytest.approx(0.35)]
    assert store.open_reservations() == 3
    assert store.commit("a", 0.2, "m") and store.state("acme/bot").committed == pytest.approx(0.2)


def test_reserve_many_checks_every_hold_before_making_any(store):
    with pytest.raises(ValueError, match="ttl_s"):
        store.reserve_many([("a", CHAIN, 0.1, 60), ("b", CHAIN, 0.1, 0)])
    with pytest.raises(TypeError, match="reservation id"):
        store.reserve_many([("a", CHAIN, 0.1, 60), ("", CHAIN, 0.1, 60)])
    assert store.open_reservations() == 0 and store.state("acme").reserved == 0
    assert store.reserve_many([]) == []


def test_reserve_many_on_an_unreachable_redis_fails_every_hold():
    from shared_core.budget import LedgerUnavailable
    from shared_core.stores.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    outcomes = store.reserve_many([("a", CHAIN, 0.1, 60), ("b", CHAIN, 0.1, 60)])
    assert len(outcomes) == 2 and all(isinstance(o, LedgerUnavailable) for o in outcomes)
    store.close()


@pytest.mark.parametrize("warm", [False, True])
def test_a_router_commit_moves_lambda_exactly_as_the_dual_pacer_computes_it(kind, tmp_path, clock, warm):
    """Router.commit's dual update (PaceUpdate): memory, SQLite and PostgreSQL run DualPacer.update in
    Python; Redis runs its arithmetic inside the commit script. Every store must store the very θ
    the pacer computes from the books before each commit — bit for bit, budgets paced over requests
    and over seconds, λ unset and set, near and past the budget's end."""
    rng = np.random.default_rng(11 + warm)
    pacer = DualPacer(step=float(rng.uniform(0.01, 0.5)), warm_step=float(rng.uniform(1e-4, 0.05)),
                      initial=float(rng.uniform(0.0, 3.0)), max_theta=50.0, clock=clock)
    if warm:
        pacer = pacer.warm(np.array([1e-4, 1e-3, 1e-2]), np.array([30.0, 3.0, 0.3]))
    budgets = {"t": Budget(usd=float(rng.uniform(0.05, 2.0)), horizon=int(rng.integers(5, 400))),
               "t/s": Budget(usd=float(rng.uniform(0.05, 2.0)), horizon_s=float(rng.uniform(10, 5000))),
               "u": Budget(usd=0.0, horizon=10)}  # nothing to pace: λ is left alone
    with ledger(kind, tmp_path, clock=clock) as store:
        for scope, budget in budgets.items():
            store.set_budget(scope, budget)
        moved = 0
        for i in range(40):
            clock.advance(float(rng.uniform(0.0, 30.0)))
            scopes = ("t", "t/s") if i % 4 else ("u",)
            store.reserve(f"r{i}", scopes, 0.0, ttl_s=600)
            cost = float(rng.choice([0.0, rng.uniform(0, 0.01), rng.uniform(0, 0.3)]))
            update = PaceUpdate(pacer, cost, frozenset(scopes))
            books = store.commit_books(f"r{i}", cost, "m", scopes=scopes, pace=update)
            for before, after in zip(books.before, books.after, strict=True):
                expected = pacer.update(before, cost)
                assert after.lam == (before.lam if expected is None else expected), (kind, i, before.scope)
                assert store.state(before.scope).lam == after.lam
                moved += expected is not None and expected != before.lam
        assert moved >= 15  # the test moved λ, in both scopes (θ also sits at 0 after cheap calls, cold)


def test_a_routed_commit_on_redis_moves_lambda_in_its_one_script_call(tmp_path, clock, monkeypatch):
    """The dual update travels with the commit: one round trip, where a pace of another kind (or a
    pacer subclass, whose rule Lua does not know) still takes a second script call for λ."""
    class Stricter(DualPacer):
        def update(self, state: ScopeState, cost: float) -> float | None:
            return 7.0

    class Halved(PaceUpdate):  # found by review: Lua ran the plain rule for it
        def __call__(self, state: ScopeState) -> float | None:
            theta = super().__call__(state)
            return None if theta is None else theta / 2

    with ledger("redis", tmp_path, clock=clock) as store:
        store.set_budget("acme", Budget(usd=1.0, horizon=100))
        calls: list[str] = []
        run = store._run
        monkeypatch.setattr(store, "_run", lambda script, *a: (calls.append(script), run(script, *a))[1])
        paces = [PaceUpdate(DualPacer(clock=clock), 0.05, frozenset({"acme"})),
                 PaceUpdate(Stricter(clock=clock), 0.05, frozenset({"acme"})),
                 Halved(DualPacer(clock=clock), 0.05, frozenset({"acme"}))]
        for i, pace in enumerate(paces):
            store.reserve(f"r{i}", ("acme",), 0.1, ttl_s=60)
            calls.clear()
            books = store.commit_books(f"r{i}", 0.05, "m", scopes=("acme",), pace=pace)
            assert calls == (["commit"] if i == 0 else ["commit", "lambda"])
            assert books.after[0].lam == pace(books.before[0]) == store.state("acme").lam


def test_a_hold_the_ledger_answers_with_an_error_fails_alone_in_reserve_many(store, kind, monkeypatch):
    """Found by review: an error answered for one hold of a batch (a Redis out of memory, say) is that
    hold's; the holds made beside it stand, so their decisions reach their callers."""
    if kind == "redis":
        import redis

        execute = redis.client.Pipeline.execute

        def one_refused(self: Any, raise_on_error: bool = True) -> Any:
            replies = execute(self, raise_on_error=raise_on_error)
            self.reset()
            return [redis.ResponseError("OOM command not allowed") if i == 1 else r for i, r in enumerate(replies)]

        monkeypatch.setattr(redis.client.Pipeline, "execute", one_refused)
    else:  # PostgreSQL's pipelined replies are read by `refuse`; the others hold one by one
        from shared_core.stores import base

        owner, name = (base, "refuse") if kind == "postgres" else (store, "_reserve")
        hold = getattr(owner, name)

        def refused_b(rid: str, *args: Any) -> None:
            if rid == "b":
                raise RuntimeError("OOM command not allowed")
            hold(rid, *args)

        monkeypatch.setattr(owner, name, refused_b)
    outcomes = store.reserve_many([("a", CHAIN, 0.1, 60), ("b", CHAIN, 0.1, 60), ("c", CHAIN, 0.1, 60)])
    assert outcomes[0] is None and outcomes[2] is None and "OOM" in str(outcomes[1])
    if kind in ("redis", "postgres"):  # the server made "b" (its reply was replaced): released, the books are a and c
        store.release("b")
    assert store.state("acme/bot").reserved == pytest.approx(0.2) and store.open_reservations() == 2
