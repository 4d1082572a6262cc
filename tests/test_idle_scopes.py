"""Idle session scopes are forgotten (issue 13): the same rule on the memory, SQLite, Redis and PostgreSQL ledgers."""

from __future__ import annotations

import sqlite3

import pytest
from ledger_support import STORES, FakeClock, ledger, postgres_admin

from shared_core import Budget, Candidate, Router
from shared_core.budget import IDLE_BATCH, MIN_IDLE_TTL_S, UnknownScope
from shared_core.router import DEFAULT_SESSION_IDLE_TTL_S
from shared_core.stores import SQLiteStore


def _cands() -> list[Candidate]:
    return [Candidate(name="small", input_price=1.0, output_price=2.0, prior_quality=0.5, max_output_tokens=100)]


@pytest.mark.parametrize("kind", STORES)
def test_an_idle_scope_is_forgotten_and_its_parent_keeps_the_spend(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("t", Budget(usd=10.0))
        store.set_budget("t/s", Budget(usd=1.0), idle_ttl_s=60)
        store.reserve("r1", ["t", "t/s"], 0.5, ttl_s=30)
        store.commit("r1", 0.25, model="small")
        assert store.state("t/s").idle_ttl_s == 60.0
        clock.advance(59)
        assert store.state("t/s").committed == 0.25  # reads are not activity, but 59 s < 60 s
        clock.advance(2)
        assert store.state("t/s") is None
        assert "t/s" not in store.scopes()
        tenant = store.state("t")
        assert (tenant.committed, tenant.requests, tenant.by_model) == (0.25, 1, {"small": 0.25})
        assert tenant.idle_ttl_s is None
        # The session's next budget starts without the forgotten spend (and per-model books).
        store.set_budget("t/s", Budget(usd=1.0), idle_ttl_s=60)
        fresh = store.state("t/s")
        assert (fresh.committed, fresh.requests, fresh.by_model) == (0.0, 0, {})


@pytest.mark.parametrize("kind", STORES)
def test_activity_keeps_a_scope_and_a_scope_holding_money_is_never_forgotten(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("s", Budget(usd=1.0), idle_ttl_s=10)
        for i in range(5):  # a reservation or release every 8 s keeps it alive for 40 s
            clock.advance(8)
            store.reserve(f"r{i}", ["s"], 0.01, ttl_s=5)
            store.release(f"r{i}")
        assert store.state("s").released == 5
        store.reserve("long", ["s"], 0.3, ttl_s=100)
        clock.advance(50)  # idle 50 s > 10 s, but 0.3 USD is held
        assert store.state("s").reserved == pytest.approx(0.3)
        clock.advance(51)  # the hold lapsed at 100 s; then the scope is idle and goes
        assert store.state("s") is None
        # A commit that comes after its scope was forgotten is not lost with it: nothing to charge
        # but the ledger still knows the reservation.
        assert store.commit("long", 0.2) is True


@pytest.mark.parametrize("kind", STORES)
def test_only_forgettable_scopes_go_and_a_budget_set_again_decides(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("keep", Budget(usd=1.0))
        store.set_budget("made-permanent", Budget(usd=1.0), idle_ttl_s=10)
        store.set_budget("made-permanent", Budget(usd=2.0))  # an explicit budget without idle_ttl_s
        store.set_budget("made-forgettable", Budget(usd=1.0))
        store.set_budget("made-forgettable", Budget(usd=1.0), idle_ttl_s=10)
        assert store.set_budget("made-forgettable", Budget(usd=5.0), only_if_absent=True) is False
        clock.advance(3600)
        assert store.scopes() == ["keep", "made-permanent"]
        assert store.state("made-permanent").budget.usd == 2.0


@pytest.mark.parametrize("kind", STORES)
def test_a_zero_hold_on_a_forgotten_session_charges_the_tenant(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("t", Budget(usd=1.0))
        store.set_budget("t/s", Budget(usd=1.0), idle_ttl_s=5)
        store.reserve("free", ["t", "t/s"], 0.0, ttl_s=60)  # a $0 model's call holds nothing
        clock.advance(10)
        assert store.state("t/s") is None
        assert store.commit("free", 0.0, model="free-model") is True
        assert store.state("t").calls_by_model == {"free-model": 1}
        store.reserve("free2", ["t"], 0.0, ttl_s=60)
        assert store.release("free2") is True


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_expiry_is_bounded_per_operation(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        n = IDLE_BATCH + 500
        for i in range(n):
            store.set_budget(f"s{i}", Budget(usd=1.0), idle_ttl_s=10)
        store.set_budget("keep", Budget(usd=1.0))
        clock.advance(11)
        assert len(store.scopes()) == n + 1 - IDLE_BATCH  # one operation forgets one batch ...
        assert store.scopes() == ["keep"]  # ... the next the rest


@pytest.mark.parametrize("bad", [0, 0.5, -1, float("nan"), float("inf"), True, "60"])
def test_idle_ttl_is_validated(bad, tmp_path):
    with ledger("memory", tmp_path) as store, pytest.raises(ValueError, match="idle_ttl_s"):
        store.set_budget("s", Budget(usd=1.0), idle_ttl_s=bad)
    with pytest.raises(ValueError, match="session_idle_ttl_s"):
        Router(_cands(), session_idle_ttl_s=bad)
    assert MIN_IDLE_TTL_S == 1.0


@pytest.mark.parametrize("kind", STORES)
def test_router_sessions_expire_tenants_and_declared_budgets_do_not(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        router = Router(_cands(), store=store, default_budget=Budget(usd=0.01), session_idle_ttl_s=3600)
        router.set_budget("acme", Budget(usd=100.0))
        router.set_budget("acme/vip", Budget(usd=5.0))
        for session in ("acme/u1", "acme/u2", "acme/vip"):
            router.settle(router.decide("Hello.", session, max_tokens=10), output_tokens=10)
        assert router.budget_state("acme/u1").idle_ttl_s == 3600.0
        clock.advance(3601)
        assert store.scopes() == ["acme", "acme/vip"]
        assert router.budget_state("acme").requests == 3
        # A returning session starts with the default budget again, with a fresh idle time.
        decision = router.decide("Hello.", "acme/u1", max_tokens=10)
        assert decision.scopes == ("acme", "acme/u1")
        assert router.budget_state("acme/u1").committed == 0.0


def test_the_default_session_idle_time_is_a_week():
    assert Router(_cands()).session_idle_ttl_s == DEFAULT_SESSION_IDLE_TTL_S == 7 * 86_400
    assert Router(_cands(), session_idle_ttl_s=None).session_idle_ttl_s is None


def test_a_session_forgotten_between_read_and_hold_is_re_established(tmp_path):
    clock = FakeClock()
    with ledger("memory", tmp_path, clock=clock) as store:
        router = Router(_cands(), store=store, default_budget=Budget(usd=1.0), session_idle_ttl_s=10)
        router.settle(router.decide("Hello.", "s", max_tokens=10), output_tokens=10)
        real_states = store.states

        def stale_read(scopes):  # the read sees the session, then it idles out before the hold
            found = real_states(scopes)
            store.states = real_states
            clock.advance(11)
            return found

        store.states = stale_read
        decision = router.decide("Hello.", "s", max_tokens=10)
        assert decision.scopes == ("s",)
        assert router.budget_state("s").reserved == pytest.approx(decision.reserved)


def test_a_version_1_sqlite_ledger_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE scopes (name TEXT PRIMARY KEY, budget TEXT NOT NULL, period_start REAL NOT NULL,
            committed INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0, released INTEGER NOT NULL DEFAULT 0,
            expired INTEGER NOT NULL DEFAULT 0, lam REAL);
        CREATE TABLE spend (scope TEXT NOT NULL, model TEXT NOT NULL, nanos INTEGER NOT NULL,
            calls INTEGER NOT NULL, PRIMARY KEY (scope, model)) WITHOUT ROWID;
        CREATE TABLE holds (id TEXT PRIMARY KEY, scopes TEXT NOT NULL, amount INTEGER NOT NULL,
            expires_at REAL NOT NULL, status TEXT NOT NULL, forget_at REAL);
        INSERT INTO scopes (name, budget, period_start, committed, requests)
            VALUES ('acme', '{"usd":10.0,"horizon":null,"horizon_s":null,"period_s":null}', 0, 2500000000, 3);
        PRAGMA user_version = 1;
    """)
    db.close()
    store = SQLiteStore(path)
    try:
        state = store.state("acme")
        assert (state.committed, state.requests, state.idle_ttl_s) == (2.5, 3, None)
        store.set_budget("acme/s", Budget(usd=1.0), idle_ttl_s=60)
        assert store.state("acme/s").idle_ttl_s == 60.0
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_unknown_scope_is_still_raised_for_a_missing_scope(tmp_path):
    with ledger("memory", tmp_path) as store, pytest.raises(UnknownScope):
        store.reserve("r", ["nowhere"], 0.1, ttl_s=10)


def _free_and_paid() -> list[Candidate]:
    return [Candidate(name="free", input_price=0.0, output_price=0.0, prior_quality=0.9, max_output_tokens=100),
            Candidate(name="paid", input_price=1.0, output_price=2.0, prior_quality=0.5, max_output_tokens=100)]


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("prefix", [None, "acme"])
def test_a_fallback_after_the_session_idled_out_re_establishes_it(kind, prefix, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        router = Router(_free_and_paid(), store=store, default_budget=Budget(usd=1.0), session_idle_ttl_s=1,
                        scope_prefix=prefix)
        decision = router.decide("Hello.", "sess", max_tokens=10)
        assert (decision.chosen, decision.reserved) == ("free", 0.0)  # a $0 hold keeps nothing alive
        clock.advance(5)
        following = router.reroute(decision, RuntimeError("boom"))
        assert following.chosen == "paid" and following.scopes == decision.scopes
        assert store.state(following.scope).reserved == pytest.approx(following.reserved)


class Tick:
    """A clock that moves `step` seconds at every reading: each ledger call takes that long."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1_000_000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("kind", STORES)
def test_a_ledger_slower_than_the_idle_time_is_an_error_not_an_unbudgeted_call(kind, tmp_path):
    from shared_core.budget import LedgerUnavailable

    with ledger(kind, tmp_path, clock=Tick(1.1)) as store:
        router = Router(_cands(), store=store, default_budget=Budget(usd=1.0), session_idle_ttl_s=1)
        with pytest.raises(LedgerUnavailable, match="vanished"):
            router.decide("Hello.", "sess", max_tokens=10)


@pytest.mark.parametrize("kind", STORES)
def test_a_shortened_idle_time_applies_at_once(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        store.set_budget("a", Budget(usd=1.0), idle_ttl_s=1000)
        store.set_budget("a", Budget(usd=1.0), idle_ttl_s=1)
        clock.advance(5)
        assert store.state("a") is None


@pytest.mark.parametrize("kind", STORES)
def test_scopes_holding_money_past_their_idle_time_are_looked_at_once_per_idle_time(kind, tmp_path):
    clock = FakeClock()
    with ledger(kind, tmp_path, clock=clock) as store:
        for i in range(50):
            store.set_budget(f"s{i}", Budget(usd=1.0), idle_ttl_s=10)
            store.reserve(f"r{i}", [f"s{i}"], 0.1, ttl_s=3600)
        clock.advance(11)
        assert len(store.scopes()) == 50  # they hold money: kept
        if kind == "sqlite":  # and rescheduled, not rescanned by every operation
            import sqlite3

            with sqlite3.connect(store.path) as db:
                assert db.execute("SELECT COUNT(*) FROM scopes WHERE idle_at <= ?", (clock.now,)).fetchone()[0] == 0
        if kind == "postgres":
            with postgres_admin() as db:
                due = f'SELECT count(*) FROM "{store.schema}".scopes WHERE idle_at <= %s'
                assert db.execute(due, (clock.now,)).fetchone()[0] == 0
        clock.advance(3600)  # the holds lapse; one more idle time and the scopes go
        store.open_reservations()
        clock.advance(11)
        assert store.scopes() == []


def test_a_saved_router_stays_confined_to_its_tenant(tmp_path):
    router = Router(_cands(), default_budget=Budget(usd=2.0), scope_prefix="tenantA", session_idle_ttl_s=3600,
                    attempt_timeout_s=5.0, deadline_s=20.0)
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    assert (loaded.scope_prefix, loaded.session_idle_ttl_s, loaded.attempt_timeout_s, loaded.deadline_s) == (
        "tenantA", 3600.0, 5.0, 20.0)
    assert loaded.decide("Hello.", "tenantB/s1", max_tokens=5).scope == "tenantA/tenantB/s1"
