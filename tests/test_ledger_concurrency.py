"""Many workers, one budget: 8 threads on SQLite and PostgreSQL, 4 processes on Redis and PostgreSQL,
all through the Router."""

from __future__ import annotations

import math
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from ledger_support import store_url

from shared_core.budget import Budget, BudgetExceeded, LedgerStore, to_nanos
from shared_core.candidates import Candidate
from shared_core.router import Router
from shared_core.stores import open_store

REQUESTS = 250
CANDIDATES = [
    Candidate(name="large", input_price=2.5, output_price=10.0, max_output_tokens=64, prior_quality=0.9),
    Candidate(name="small", input_price=0.15, output_price=0.6, max_output_tokens=64, prior_quality=0.6),
]
# The tenant's budget runs out part-way, so workers race for its last cents.
TENANT = Budget(usd=0.25)
SESSION = Budget(usd=5.0)
SCOPES = ("acme", "acme/bot")


def _serve(router: Router, seed: int, n: int) -> tuple[list[float], int]:
    """Route `n` requests, settling each with a random reply length; the costs and the refusals."""
    rng = np.random.default_rng(seed)
    costs, refused = [], 0
    for i in range(n):
        try:
            decision = router.decide(f"Request {seed}-{i}: summarise the quarterly report.", "acme/bot")
        except BudgetExceeded:
            refused += 1
            continue
        costs.append(router.settle(decision, output_tokens=int(rng.integers(1, 65))))
    return costs, refused


def _serve_in_process(url: str, seed: int) -> tuple[list[float], int]:
    router = Router(CANDIDATES, store=url)
    try:
        return _serve(router, seed, REQUESTS)
    finally:
        router.store.close()


def _assert_books_balance(store: LedgerStore, costs: list[float], refused: int) -> None:
    worst = max(c.worst_case_cost(20, None) for c in CANDIDATES)
    assert refused > 0, "the budget never ran out: the test did not exercise the limit"
    assert store.open_reservations() == 0
    for scope, budget in zip(SCOPES, (TENANT, SESSION), strict=False):
        st = store.state(scope)
        assert st.reserved == 0.0
        assert st.requests == len(costs)
        assert to_nanos(st.committed) == sum(to_nanos(c) for c in costs)
        assert math.fsum(costs) == pytest.approx(st.committed, abs=1e-9)
        assert sum(to_nanos(v) for v in st.by_model.values()) == to_nanos(st.committed)
        assert st.committed <= budget.usd
    # Refusals came only when the money was really gone, not because of leaked holds.
    assert store.state("acme").committed >= TENANT.usd - 9 * worst


def _set_budgets(url: str) -> None:
    store = open_store(url)
    store.set_budget("acme", TENANT)
    store.set_budget("acme/bot", SESSION)
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_eight_threads_share_one_budget(kind, tmp_path):
    with store_url(kind, tmp_path) as url:
        _set_budgets(url)
        router = Router(CANDIDATES, store=url)
        results: list[tuple[list[float], int]] = []
        errors: list[BaseException] = []

        def work(seed: int) -> None:
            try:
                results.append(_serve(router, seed, REQUESTS))
            except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
                errors.append(e)

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        costs = [c for cs, _ in results for c in cs]
        _assert_books_balance(router.store, costs, sum(r for _, r in results))
        assert len(costs) + sum(r for _, r in results) == 8 * REQUESTS
        router.store.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_four_processes_share_one_budget(kind, tmp_path):
    with store_url(kind, tmp_path) as url:
        _set_budgets(url)
        # Forked workers start in milliseconds; each opens its own connection from the URL.
        with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_serve_in_process, [url] * 4, range(4)))
        costs = [c for cs, _ in results for c in cs]
        store = open_store(url)
        _assert_books_balance(store, costs, sum(r for _, r in results))
        assert len(costs) + sum(r for _, r in results) == 4 * REQUESTS
        store.close()
