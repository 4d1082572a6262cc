"""A worker killed with SIGKILL: its held money comes back after expiry; its commits stay."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from ledger_support import DURABLE, store_url

from shared_core.budget import Budget, BudgetExceeded, to_nanos
from shared_core.stores import open_store

TTL_S = 1.0
SCOPES = ["acme", "acme/worker"]

# The worker commits requests, printing each cost once its commit has returned, then holds
# $0.50 and prints "held"; the test kills it there. Given "forever" it only commits, and the
# test kills it after 40 commits, wherever it has got to.
WORKER = """
import sys, time
from shared_core.stores import open_store

url, ttl, forever = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "forever"
store = open_store(url)
i = 0
while forever or i < 20:
    cost = (i % 7 + 1) * 0.000125
    store.reserve(f"r{i}", ["acme", "acme/worker"], 0.001, ttl)
    store.commit(f"r{i}", cost, "m")
    print(repr(cost), flush=True)
    i += 1
store.reserve("held", ["acme", "acme/worker"], 0.5, ttl)
print("held", flush=True)
time.sleep(600)
"""


def _run_and_kill(url: str, *, forever: bool) -> list[float]:
    """Start the worker, SIGKILL it once it holds money (or after 40 commits with `forever`),
    and return every cost it reported, including lines still in the pipe at the kill."""
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, str(TTL_S), "forever" if forever else "once"],
        stdout=subprocess.PIPE, text=True,
    )
    lines = []
    for line in worker.stdout:
        lines.append(line.strip())
        if lines[-1] == "held" or (forever and len(lines) == 40):
            break
    else:
        raise AssertionError(f"the worker ended early with status {worker.wait()}")
    os.kill(worker.pid, signal.SIGKILL)
    assert worker.wait(timeout=10) == -signal.SIGKILL
    lines += worker.stdout.read().split()
    worker.stdout.close()
    return [float(x) for x in lines if x != "held"]


def _wait_for_expiry(store, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while store.open_reservations():
        assert time.monotonic() < end, "the dead worker's reservation never expired"
        time.sleep(0.05)


@pytest.fixture(params=DURABLE)
def url(request, tmp_path):
    with store_url(request.param, tmp_path) as u:
        store = open_store(u)
        store.set_budget("acme", Budget(usd=1.0))
        store.set_budget("acme/worker", Budget(usd=1.0))
        store.close()
        yield u


@pytest.mark.slow
def test_money_held_by_a_killed_worker_returns_after_expiry(url):
    costs = _run_and_kill(url, forever=False)

    store = open_store(url)
    spent = sum(to_nanos(c) for c in costs)
    for scope in SCOPES:
        st = store.state(scope)
        assert to_nanos(st.committed) == spent and st.reserved == 0.5
    free = 1.0 - spent / 1e9
    with pytest.raises(BudgetExceeded):
        store.reserve("survivor", SCOPES, free, ttl_s=60)

    _wait_for_expiry(store)
    for scope in SCOPES:
        st = store.state(scope)
        assert (to_nanos(st.committed), st.reserved, st.expired, st.requests) == (spent, 0.0, 1, len(costs))
    store.reserve("survivor", SCOPES, free, ttl_s=60)  # all the money not spent is available again
    store.close()


@pytest.mark.slow
def test_a_kill_at_any_moment_loses_no_commit(url):
    reported = _run_and_kill(url, forever=True)  # killed somewhere in the loop, perhaps mid-transaction

    store = open_store(url)
    committed = to_nanos(store.state("acme").committed)
    reported_nanos = sum(to_nanos(c) for c in reported)
    # The commit after the last reported one may or may not have landed; none before it is lost.
    assert committed - reported_nanos in {0} | {to_nanos((k + 1) * 0.000125) for k in range(7)}
    assert store.open_reservations() <= 1
    _wait_for_expiry(store)
    for scope in SCOPES:
        st = store.state(scope)
        assert st.reserved == 0.0 and to_nanos(st.committed) == committed
    store.close()
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
