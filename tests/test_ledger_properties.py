"""Property tests: random reserve / commit / release / expire sequences against a reference model.

The property: what a scope has spent on time plus what it holds never exceeds its budget. Only a
commit arriving after its reservation expired (or was released) can push spend past the
budget — the money was really spent — and then by exactly that commit.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_support import FakeClock, ledger, require_postgres

from shared_core.budget import Budget, BudgetExceeded, MemoryStore, to_nanos
from shared_core.stores import SQLiteStore

BUDGETS = {"t": 1_000_000_000, "t/a": 600_000_000, "t/b": 500_000_000}  # nano-dollars
CHAINS = [("t",), ("t", "t/a"), ("t", "t/b")]

# A reservation asks for some cents, for exactly what is left, or for a nano-dollar more: the
# edges where an off-by-one or a check skipped in one scope shows.
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.sampled_from(CHAINS), st.sampled_from(["cents", "all", "all+1"]),
                  st.integers(0, 45), st.sampled_from([5.0, 20.0])),
        st.tuples(st.just("commit"), st.integers(0, 40), st.integers(0, 100)),
        st.tuples(st.just("release"), st.integers(0, 40)),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 4.0, 10.0])),
    ),
    min_size=5,
    max_size=40,
)


@dataclass
class _Hold:
    id: str
    chain: tuple[str, ...]
    amount: int
    expires_at: float
    status: str = "open"


class _Model:
    """What the books must say, computed the slow, obvious way."""

    def __init__(self) -> None:
        self.holds: list[_Hold] = []
        self.committed = dict.fromkeys(BUDGETS, 0)
        self.late = dict.fromkeys(BUDGETS, 0)

    def expire(self, now: float) -> None:
        for h in self.holds:
            if h.status == "open" and h.expires_at <= now:
                h.status = "lapsed"

    def reserved(self, scope: str) -> int:
        return sum(h.amount for h in self.holds if h.status == "open" and scope in h.chain)

    def left(self, chain: tuple[str, ...]) -> int:
        return min(BUDGETS[s] - self.committed[s] - self.reserved(s) for s in chain)

    def amount(self, chain: tuple[str, ...], how: str, cents: int) -> int:
        left = max(0, self.left(chain))
        return {"cents": cents * 10_000_000, "all": left, "all+1": left + 1}[how]


def _run(store, clock: FakeClock, operations) -> None:
    for scope, nanos in BUDGETS.items():
        store.set_budget(scope, Budget(usd=nanos / 1e9))
    model = _Model()
    for op in operations:
        model.expire(clock())
        if op[0] == "reserve":
            _, chain, how, cents, ttl = op
            amount, rid = model.amount(chain, how, cents), f"r{len(model.holds)}"
            if amount == 0 or amount <= model.left(chain):  # a free call is never refused for money
                store.reserve(rid, chain, amount / 1e9, ttl_s=ttl)
                model.holds.append(_Hold(rid, chain, amount, clock() + ttl))
            else:
                with pytest.raises(BudgetExceeded):
                    store.reserve(rid, chain, amount / 1e9, ttl_s=ttl)
        elif op[0] == "commit" and model.holds:
            hold = model.holds[op[1] % len(model.holds)]
            actual = hold.amount * op[2] // 100
            assert store.commit(hold.id, actual / 1e9, "m") is (hold.status != "committed")
            if hold.status != "committed":
                for s in hold.chain:
                    model.committed[s] += actual
                    if hold.status != "open":
                        model.late[s] += actual
                hold.status = "committed"
        elif op[0] == "release" and model.holds:
            hold = model.holds[op[1] % len(model.holds)]
            assert store.release(hold.id) is (hold.status == "open")
            if hold.status == "open":
                hold.status = "released"
        elif op[0] == "tick":
            clock.advance(op[1])
            model.expire(clock())

        for scope, budget in BUDGETS.items():
            books = store.state(scope)
            committed, reserved = to_nanos(books.committed), to_nanos(books.reserved)
            assert (committed, reserved) == (model.committed[scope], model.reserved(scope))
            assert committed + reserved - model.late[scope] <= budget
        assert store.open_reservations() == sum(h.status == "open" for h in model.holds)


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS)
def test_memory_ledger_never_spends_past_its_budget(operations):
    clock = FakeClock()
    _run(MemoryStore(clock=clock), clock, operations)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_sqlite_ledger_never_spends_past_its_budget(operations):
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "ledger.db", clock=clock)
        try:
            _run(store, clock, operations)
        finally:
            store.close()


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_postgres_ledger_never_spends_past_its_budget(operations):
    require_postgres()
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as tmp, ledger("postgres", Path(tmp), clock=clock) as store:
        _run(store, clock, operations)
