"""Finished reservations are remembered for a bounded time and number (issue 17, item 4), alike on every store.

A ledger remembers a finished reservation until `retention_s` after its last change or until
`max_finished` later ones are remembered, whichever comes first; a repeat it remembers charges once,
and a commit it forgot is recorded once by `pending.record_anew`, which says whether it can count twice.
"""

from __future__ import annotations

import logging
import sqlite3

import pytest
from ledger_support import finished_records, ledger, postgres_admin, store_url

from shared_core import Budget, Candidate, Router
from shared_core.budget import DEFAULT_MAX_FINISHED, LedgerUnavailable, check_max_finished
from shared_core.pending import CLOCK_SLACK_S, PendingCommit, record_anew
from shared_core.stores import LedgerStore, MemoryStore, SQLiteStore, open_store

CHAIN = ("acme", "acme/bot")


def _budgets(store) -> None:
    store.set_budget("acme", Budget(usd=1_000.0))
    store.set_budget("acme/bot", Budget(usd=1_000.0))


def test_at_most_max_finished_are_remembered_the_oldest_forgotten_first(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock, max_finished=5) as store:
        _budgets(store)
        store.reserve("open", CHAIN, 1.0, ttl_s=3_600)  # open holds are never forgotten for the bound
        for i in range(40):  # 8 × the bound, ending all three ways
            store.reserve(f"r{i}", CHAIN, 0.5, ttl_s=10 if i % 4 == 3 else 3_600)
            if i % 4 == 1:
                store.release(f"r{i}")
            elif i % 4 != 3:
                store.commit(f"r{i}", 0.25, "m")
            clock.advance(1)  # the ttl-10 holds lapse along the way
        clock.advance(20)
        assert store.open_reservations() == 1
        assert finished_records(store) == 5
        # The five that ended last: r37 (released), r38 (committed) and the lapses of r31, r35 and r39: a
        # repeat of one counts nothing more, a late commit of a lapsed one counts once.
        assert store.commit("r38", 0.25, "m") is False
        assert store.commit("r35", 0.125, "m") is True  # lapsed, committed late: its spend counts
        assert store.commit("r35", 0.125, "m") is False
        with pytest.raises(KeyError, match="unknown reservation 'r0'"):
            store.commit("r0", 0.25, "m")
        assert store.commit("open", 0.5, "m") is True
        spent = 0.25 * 20 + 0.125 + 0.5  # r0, r2, r4, ... committed once each, then r35 and `open`
        assert store.state("acme").committed == pytest.approx(spent)
        assert store.state("acme").requests == 22


def test_a_repeat_is_recognised_until_retention_s_after_the_end_to_the_second(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock, retention_s=100, max_finished=10) as store:
        _budgets(store)
        store.reserve("r", CHAIN, 0.5, ttl_s=10)
        store.commit("r", 0.5)
        clock.advance(99.5)
        assert store.commit("r", 0.5) is False
        assert store.remembered_since() == clock.now - 99.5  # the commit is the oldest end remembered
        clock.advance(0.5)  # exactly retention_s after the commit: forgotten
        with pytest.raises(KeyError):
            store.commit("r", 0.5)
        assert store.state("acme").committed == 0.5 and store.state("acme").requests == 1
        assert store.remembered_since() == clock.now - 100


def test_a_late_commit_is_remembered_from_when_it_was_made_as_the_newest(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock, retention_s=100, max_finished=3) as store:
        _budgets(store)
        store.reserve("late", CHAIN, 0.5, ttl_s=10)
        clock.advance(10)
        assert store.open_reservations() == 0  # lapsed at +10: remembered until +110
        clock.advance(95)
        assert store.commit("late", 0.25, "m") is True  # at +105, after a long outage
        clock.advance(60)
        assert store.commit("late", 0.25, "m") is False  # at +165: remembered from its commit on
        for i in range(2):
            store.reserve(f"r{i}", CHAIN, 0.5, ttl_s=60)
            store.commit(f"r{i}", 0.125, "m")
        store.reserve("newest", CHAIN, 0.5, ttl_s=60)
        store.release("newest")  # the fourth end: `late`, the oldest of the three before it, goes
        with pytest.raises(KeyError):
            store.commit("late", 0.25, "m")
        assert store.commit("r0", 0.125, "m") is False
        assert store.state("acme").committed == 0.5


def test_remembered_since_is_the_oldest_end_still_remembered(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock, retention_s=100, max_finished=3) as store:
        _budgets(store)
        start = clock.now
        assert store.remembered_since() == start - 100  # nothing ended: anything before 100 s is gone
        for i in range(5):
            store.reserve(f"r{i}", CHAIN, 0.5, ttl_s=60)
            store.commit(f"r{i}", 0.125)
            clock.advance(1)
        assert store.remembered_since() == start + 2  # r0 and r1 were forgotten for the bound
        clock.advance(200)
        assert store.remembered_since() == clock.now - 100


def test_a_reused_id_of_a_forgotten_reservation_is_a_new_reservation(kind, tmp_path, clock):
    with ledger(kind, tmp_path, clock=clock, max_finished=1) as store:
        _budgets(store)
        store.reserve("r", CHAIN, 0.5, ttl_s=60)
        store.commit("r", 0.25)
        store.reserve("other", CHAIN, 0.5, ttl_s=60)
        store.commit("other", 0.25)  # `r` is forgotten
        clock.advance(30)
        store.reserve("r", CHAIN, 0.5, ttl_s=60)  # its first hold's expiry, at +60, must not end this one
        clock.advance(45)
        assert store.open_reservations() == 1
        assert store.commit("r", 0.25) is True
        assert store.state("acme").committed == 0.75


def test_the_bound_holds_under_concurrent_requests(kind, tmp_path):
    import threading

    with ledger(kind, tmp_path, max_finished=50) as store:
        _budgets(store)
        errors: list[BaseException] = []

        def requests(worker: int) -> None:
            try:
                for i in range(60):
                    store.reserve(f"w{worker}-{i}", CHAIN, 0.5, ttl_s=600)
                    store.commit(f"w{worker}-{i}", 0.125)
            except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
                errors.append(e)

        threads = [threading.Thread(target=requests, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        # PostgreSQL forgets beside the calls running at that moment: at most one more per thread.
        kept = finished_records(store)
        assert 50 <= kept <= (50 + 4 if kind == "postgres" else 50)
        recognised = 0
        for w in range(4):
            for i in range(60):
                try:
                    assert store.commit(f"w{w}-{i}", 0.125) is False
                    recognised += 1
                except KeyError:
                    pass
        assert recognised == kept  # every one kept is known as committed; no repeat charged anything
        state = store.state("acme")
        assert (state.committed, state.requests, state.reserved) == (240 * 0.125, 240, 0.0)


def test_max_finished_must_be_a_whole_number_of_reservations(tmp_path):
    assert check_max_finished(1) == 1 and DEFAULT_MAX_FINISHED == 100_000
    for bad in (0, -5, 2.5, True, "10", None):
        with pytest.raises(ValueError, match="max_finished must be a whole number"):
            MemoryStore(max_finished=bad)
    with pytest.raises(ValueError, match="max_finished"):
        SQLiteStore(tmp_path / "l.db", max_finished=0)
    with pytest.raises(ValueError, match="retention_s must be a positive number"):
        open_store("memory://", retention_s=True)


def test_a_memory_ledger_keeps_what_is_open_and_the_bound_whatever_the_traffic():
    store = MemoryStore(max_finished=1_000)
    store.set_budget("t", Budget(usd=1e6))
    for i in range(20_000):
        store.reserve(str(i), ("t",), 0.001, ttl_s=600)  # the holds' expiries are far ahead
        if i % 100:
            store.commit(str(i), 0.0005)
    assert store.open_reservations() == 200
    assert len(store._done) == len(store._order) == 1_000
    assert len(store._expiry) <= 2 * 201 + 65  # 20,000 if finished holds' expiries piled up


# ----------------------------------------------------------------- commits the ledger forgot


def _entry(rid: str, kept_at: float, cost: float = 0.25) -> PendingCommit:
    return PendingCommit(rid, CHAIN, "m", cost, kept_at, "test")


def test_a_forgotten_hold_committed_later_is_recorded_once_and_exactly(kind, tmp_path, clock, caplog):
    with ledger(kind, tmp_path, clock=clock, retention_s=100, max_finished=10) as store:
        _budgets(store)
        store.reserve("slow", CHAIN, 0.5, ttl_s=10)
        clock.advance(10)
        assert store.state("acme").reserved == 0.0  # lapsed at +10, so forgotten at +110
        clock.advance(290)  # the call's cost arrives at +300
        entry = _entry("slow", kept_at=clock.now)
        with pytest.raises(KeyError):
            store.commit("slow", 0.25, "m")
        with caplog.at_level(logging.WARNING, logger="omniroute"):
            assert record_anew(store, entry, ttl_s=60) is True
            assert record_anew(store, entry, ttl_s=60) is False  # a retry, a replay: nothing more
        assert "exactly: no attempt since" in caplog.text and "counts it twice" not in caplog.text
        state = store.state("acme")
        assert (state.committed, state.requests, state.reserved) == (0.25, 1, 0.0)


def test_a_kept_commit_older_than_what_the_ledger_remembers_is_recorded_once_and_flagged(kind, tmp_path, clock,
                                                                                         caplog):
    with ledger(kind, tmp_path, clock=clock, retention_s=3_600, max_finished=3) as store:
        _budgets(store)
        store.reserve("lost", CHAIN, 0.5, ttl_s=60)
        kept_at = clock.now
        assert store.commit("lost", 0.25, "m") is True  # it landed, but its reply was lost: kept for later
        for i in range(3):  # more than max_finished end before the replay: "lost" is forgotten
            clock.advance(CLOCK_SLACK_S)
            store.reserve(f"r{i}", CHAIN, 0.5, ttl_s=60)
            store.commit(f"r{i}", 0.125, "m")
        assert store.remembered_since() > kept_at
        with caplog.at_level(logging.WARNING, logger="omniroute"):
            assert record_anew(store, _entry("lost", kept_at), ttl_s=60) is True
            assert record_anew(store, _entry("lost", kept_at), ttl_s=60) is False
        assert "before what it remembers" in caplog.text and "counts it twice" in caplog.text
        assert "under lost:recorded-anew, once" in caplog.text
        # The case it warns of: counted at the first try and again now, once each.
        assert store.state("acme").committed == pytest.approx(0.25 + 3 * 0.125 + 0.25)


def test_a_kept_commit_whose_scopes_are_all_gone_is_a_key_error(tmp_path, clock):
    store = MemoryStore(clock=clock)
    with pytest.raises(KeyError, match="'acme/bot' has no budget"):
        record_anew(store, _entry("r", clock.now), ttl_s=60)


def test_a_store_that_cannot_tell_flags_every_forgotten_commit(clock, caplog):
    class Opaque(MemoryStore):
        remembered_since = LedgerStore.remembered_since  # the contract's default: math.inf

    store = Opaque(clock=clock)
    _budgets(store)
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        assert record_anew(store, _entry("r", clock.now), ttl_s=60) is True
    assert "since nothing" in caplog.text and "counts it twice" in caplog.text


class LostReplies(MemoryStore):
    """A memory ledger whose commits land but whose replies are lost while `lose` is set."""

    lose = False

    def commit(self, reservation_id, actual, model=None):
        done = super().commit(reservation_id, actual, model)
        if self.lose:
            raise LedgerUnavailable("timeout reading the reply")
        return done

    def commit_books(self, reservation_id, actual, model=None, **books):
        done = super().commit_books(reservation_id, actual, model, **books)
        if self.lose:
            raise LedgerUnavailable("timeout reading the reply")
        return done


def test_a_router_replaying_a_lost_reply_within_the_bound_charges_once(clock):
    store = LostReplies(clock=clock, max_finished=3)
    router = Router([Candidate(name="m", input_price=1.0, output_price=2.0, prior_quality=0.5,
                               max_output_tokens=100)], store=store)
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello.", "s", max_tokens=10)
    store.lose = True
    router.commit(decision, cost=0.25)  # it landed, but every reply was lost: kept for later
    store.lose = False
    for i in range(2):  # other processes' requests end meanwhile: it is still among the last three
        store.reserve(f"other{i}", ["s"], 0.125, ttl_s=60)
        store.commit(f"other{i}", 0.125)
    assert router.retry_pending() == 0
    state = store.state("s")
    assert (state.committed, state.requests) == (0.5, 3)


# ----------------------------------------------------------------- ledgers made before the bound


def test_a_sqlite_ledger_made_before_the_bound_gets_it_in_place(tmp_path, clock):
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as db:  # a version 2 file as code before the bound wrote it
        db.executescript("""
            CREATE TABLE scopes (name TEXT PRIMARY KEY, budget TEXT NOT NULL, period_start REAL NOT NULL,
                committed INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0,
                requests INTEGER NOT NULL DEFAULT 0, released INTEGER NOT NULL DEFAULT 0,
                expired INTEGER NOT NULL DEFAULT 0, lam REAL, idle_ttl_s REAL, idle_at REAL);
            CREATE TABLE spend (scope TEXT NOT NULL, model TEXT NOT NULL, nanos INTEGER NOT NULL,
                calls INTEGER NOT NULL, PRIMARY KEY (scope, model)) WITHOUT ROWID;
            CREATE TABLE holds (id TEXT PRIMARY KEY, scopes TEXT NOT NULL, amount INTEGER NOT NULL,
                expires_at REAL NOT NULL, status TEXT NOT NULL, forget_at REAL);
            INSERT INTO scopes (name, budget, period_start, committed, requests)
                VALUES ('t', '{"usd":10.0,"horizon":null,"horizon_s":null,"period_s":null}', 0, 250000000, 1);
            INSERT INTO holds VALUES ('old', '["t"]', 500000000, 2000000.0, 'committed', 1086400.0);
            PRAGMA user_version = 2;
        """)
    store = SQLiteStore(path, clock=clock, max_finished=2)
    try:
        assert store.commit("old", 0.25) is False  # remembered as before, forgotten by time alone
        for i in range(4):
            store.reserve(f"r{i}", ["t"], 0.5, ttl_s=60)
            store.commit(f"r{i}", 0.125)
        assert finished_records(store) == 3  # the old one and the bound's two
        assert store.commit("r3", 0.125) is False
        with pytest.raises(KeyError):
            store.commit("r1", 0.125)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # code before the bound still opens it


def test_a_postgres_ledger_made_before_the_bound_gets_it_in_place(tmp_path, clock):
    with store_url("postgres", tmp_path) as url:
        open_store(url).close()
        schema = url.rpartition("schema=")[2]
        with postgres_admin() as db:  # take it back to what code before the bound made
            db.execute(f'DROP FUNCTION "{schema}".ledger_bound(bigint)')
            db.execute(f'DROP SEQUENCE "{schema}".holds_ended_seq')
            db.execute(f'ALTER TABLE "{schema}".holds DROP COLUMN seq')
        store = open_store(url, clock=clock, max_finished=2)
        try:
            store.set_budget("t", Budget(usd=10.0))
            for i in range(4):
                store.reserve(f"r{i}", ["t"], 0.5, ttl_s=60)
                store.commit(f"r{i}", 0.125)
            assert finished_records(store) == 2
            assert store.commit("r3", 0.125) is False
            with pytest.raises(KeyError):
                store.commit("r1", 0.125)
        finally:
            store.close()
