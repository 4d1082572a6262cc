"""What only the PostgreSQL ledger has: schemas as ledgers, its URL, lost connections, forks, lock order.

The ledger's contract itself runs on PostgreSQL with every other store (test_ledger.py and the rest).
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import sys
import threading
import time

import pytest
from ledger_support import PG_URL, FakeClock, ledger, postgres_admin, require_postgres, store_url

from shared_core.budget import Budget, BudgetExceeded, LedgerUnavailable, UnknownScope, to_nanos
from shared_core.stores import open_store


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_postgres()


def test_a_schema_is_one_ledger_and_its_url_names_it(tmp_path):
    with store_url("postgres", tmp_path) as url, store_url("postgres", tmp_path) as other_url:
        first = open_store(url.replace("postgresql://", "postgres://"))  # both schemes name it
        second, other = open_store(url), open_store(other_url)
        try:
            schema = url.rpartition("schema=")[2]
            assert first.url == second.url == f"postgresql://127.0.0.1:5432/test?schema={schema}"
            assert other.url != first.url
            first.set_budget("acme", Budget(usd=1.0))
            first.reserve("r", ["acme"], 0.5, ttl_s=60)
            assert second.commit("r", 0.25, "m") is True
            assert second.state("acme").committed == 0.25
            assert other.state("acme") is None and other.scopes() == []
            # Without a clock the database's is used: the same as this host's, here.
            assert abs(first.state("acme").period_start - time.time()) < 60
        finally:
            for store in (first, second, other):
                store.close()


@pytest.mark.parametrize("schema", ["", "bad-name", "1st", "x" * 64, "a$b", "a%s"])
def test_the_schema_name_is_checked(schema):
    with pytest.raises(ValueError, match="schema must be 1 to 63 letters"):
        open_store(f"{PG_URL}?schema={schema}")


def test_stores_opened_together_create_the_schema_once(tmp_path):
    with store_url("postgres", tmp_path) as url:
        barrier, stores, errors = threading.Barrier(6), [], []

        def first_use() -> None:
            barrier.wait()
            try:
                stores.append(open_store(url))
            except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
                errors.append(e)

        threads = [threading.Thread(target=first_use) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        stores[0].set_budget("acme", Budget(usd=1.0))
        assert all(s.state("acme").budget.usd == 1.0 for s in stores)
        for s in stores:
            s.close()


def test_a_ledger_of_another_schema_version_is_refused(tmp_path):
    with store_url("postgres", tmp_path) as url:
        open_store(url).close()
        schema = url.rpartition("schema=")[2]
        with postgres_admin() as db:
            db.execute(f'UPDATE "{schema}".ledger_schema SET version = 99')
        with pytest.raises(ValueError, match="holds ledger schema version 99; this code reads 1"):
            open_store(url)


def test_an_unreachable_server_is_unavailable_not_an_error_of_the_caller():
    with pytest.raises(LedgerUnavailable, match="PostgreSQL ledger at postgresql://127.0.0.1:1/test is unreachable"):
        open_store("postgresql://postgres@127.0.0.1:1/test")


def test_without_psycopg_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    monkeypatch.delitem(sys.modules, "shared_core.stores.postgres", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'omniroute\[postgres\]'"):
        open_store(PG_URL)


def test_a_pooled_connection_the_server_dropped_is_replaced(tmp_path, caplog):
    with ledger("postgres", tmp_path, max_connections=1) as store:  # one connection: the one killed
        store.set_budget("acme", Budget(usd=1.0))
        with postgres_admin() as db:  # as a server restart or an idle-connection reaper would
            killed = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND query LIKE %s", (f"%{store.schema}%",),
            ).fetchone()[0]
        assert killed == 1
        time.sleep(0.2)  # the backend ends a moment after it is told to
        with caplog.at_level(logging.WARNING, logger="omniroute"):
            store.reserve("r", ["acme"], 0.5, ttl_s=60)
        assert "a pooled connection was broken" in caplog.text
        assert store.commit("r", 0.5) is True and store.state("acme").committed == 0.5


def _commit_in_child(store, rid: str) -> None:
    store.reserve(rid, ["acme"], 0.25, ttl_s=60)
    store.commit(rid, 0.25, "child")


def test_a_forked_child_uses_connections_of_its_own(tmp_path):
    with ledger("postgres", tmp_path) as store:
        store.set_budget("acme", Budget(usd=1.0))  # the parent's pool holds a connection now
        child = multiprocessing.get_context("fork").Process(target=_commit_in_child, args=(store, "child"))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        store.reserve("parent", ["acme"], 0.25, ttl_s=60)  # the parent's connection still works
        store.commit("parent", 0.25, "parent")
        assert store.state("acme").by_model == {"child": 0.25, "parent": 0.25}


def test_crossing_chains_lapsing_holds_and_idle_scopes_never_deadlock(tmp_path):
    """Threads lock overlapping scope chains while their sweeps lapse each other's holds and forget
    idle scopes: the lock order must hold (PostgreSQL would abort a deadlock: LedgerUnavailable)."""
    clock = FakeClock()
    scopes = ["t", "t/a", "t/b", "t/a/x", "t/b/y"]
    chains = [["t", "t/a", "t/a/x"], ["t/a/x", "t/a", "t"], ["t", "t/b", "t/b/y"], ["t/b", "t"], ["t/a", "t/b"]]
    with ledger("postgres", tmp_path, clock=clock) as store:
        for s in scopes:
            store.set_budget(s, Budget(usd=5.0))
        committed = {s: 0 for s in scopes}
        tally, errors = threading.Lock(), []

        def work(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for i in range(60):
                    chain, rid = rng.choice(chains), f"{seed}-{i}"
                    if rng.random() < 0.3:  # sessions come and go: idle scopes for the sweeps to forget
                        store.set_budget(f"t/s{seed}-{i}", Budget(usd=1.0), idle_ttl_s=2.0)
                        chain = [*chain, f"t/s{seed}-{i}"]
                    try:
                        store.reserve(rid, chain, 0.01, ttl_s=rng.choice([0.2, 60.0]))
                    except (BudgetExceeded, UnknownScope):  # or the session idled out as others' time passed
                        continue
                    clock.advance(0.05)  # holds with the short ttl lapse in others' sweeps
                    if rng.random() < 0.7:
                        cost = rng.choice([0.0, 0.005, 0.01])
                        assert store.commit(rid, cost, "m") is True
                        with tally:
                            for s in chain:
                                if s in committed:
                                    committed[s] += to_nanos(cost)
                    else:
                        store.release(rid)
            except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
                errors.append(e)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        clock.advance(120)  # every hold has lapsed, every session is idle
        assert store.open_reservations() == 0
        assert store.scopes() == sorted(scopes)
        for state in store.states(scopes):
            assert state.reserved == 0.0 and to_nanos(state.committed) == committed[state.scope]


def test_a_server_that_refuses_writes_is_unavailable_and_the_router_keeps_the_money(tmp_path):
    # After a failover to a standby the server answers, read-only: that is an unavailable ledger
    # (the settle is kept and retried), never a raw psycopg error that loses a paid call.
    from shared_core import Candidate, Router

    with store_url("postgres", tmp_path) as url:
        writable = open_store(url)
        writable.set_budget("acme", Budget(usd=1.0))
        router = Router([Candidate(name="m", input_price=1, output_price=1, prior_quality=0.5)], store=writable)
        decision = router.decide("hello", "acme")
        from shared_core.stores.postgres import PostgresStore

        read_only = PostgresStore(f"{PG_URL}?options=-c%20default_transaction_read_only%3Don", schema=writable.schema)
        with pytest.raises(LedgerUnavailable, match="read-only"):
            read_only.reserve("r2", ["acme"], 0.1, ttl_s=60)
        router.store = read_only
        router.settle(decision, cost=0.01)  # the ledger cannot take it: kept, not lost
        assert len(router._kept) == 1
        router.store = writable
        router.retry_pending()
        assert writable.state("acme").committed == pytest.approx(0.01)
        read_only.close()
        writable.close()


@pytest.mark.slow
def test_a_row_locked_elsewhere_fails_in_bounded_time(tmp_path):
    with ledger("postgres", tmp_path) as store:
        store.set_budget("acme", Budget(usd=1.0))
        schema = store.schema
        with postgres_admin() as admin, admin.transaction():
            admin.execute(f'SELECT 1 FROM "{schema}".scopes WHERE name = %s FOR UPDATE', ("acme",))
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                store.reserve("r", ["acme"], 0.1, ttl_s=60)
            assert time.monotonic() - started < 8  # lock_timeout, not forever
        store.reserve("r", ["acme"], 0.1, ttl_s=60)  # and works once the lock is gone


def test_a_server_that_stops_answering_is_cut_off(tmp_path, monkeypatch):
    # A frozen server (or a path that swallows packets) keeps the socket open and never answers:
    # the client shuts the socket after _SEVER_S and the call fails as unavailable (a statement
    # the server would run for 30 s stands in for the silence; statement_timeout is 5 s).
    import shared_core.stores.postgres as pg

    monkeypatch.setattr(pg, "_SEVER_S", 0.5)
    with ledger("postgres", tmp_path) as store:
        store._sql["scopes"] = "SELECT pg_sleep(30)"
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            store.scopes()
        assert time.monotonic() - started < 3  # cut off, and once more on the retried connection


def test_values_postgresql_cannot_hold_are_value_errors():
    from shared_core import Candidate

    with pytest.raises(ValueError, match="printable"):
        Candidate(name="a\x00b", input_price=1, output_price=1)
