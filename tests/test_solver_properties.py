"""Properties of the batch solver on arbitrary small instances (hypothesis), ties and zero costs included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared_core.solver import Infeasible, solve

# Coarse grids make exact ties (equal quality, equal cost, zero cost) common, where greedy
# bookkeeping usually breaks.
QUALITY = st.integers(0, 10).map(lambda k: k / 10)
COST = st.integers(0, 20).map(lambda k: k / 4)


@st.composite
def instances(draw):
    n = draw(st.integers(1, 25))
    m = draw(st.integers(1, 6))
    q = draw(arrays(np.float64, (n, m), elements=QUALITY))
    c = draw(arrays(np.float64, (n, m), elements=COST))
    return q, c


def _span(c):
    return float(c.min(axis=1).sum()), float(c.max(axis=1).sum())


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(instances(), st.floats(0, 1), st.floats(0, 1))
def test_more_budget_never_lowers_predicted_quality_and_spend_stays_within(inst, a, b):
    q, c = inst
    lo, hi = _span(c)
    small, large = sorted((lo + a * (hi - lo), lo + b * (hi - lo)))
    first, second = solve(q, c, budget=small), solve(q, c, budget=large)
    rows = np.arange(len(q))
    for sol, budget in ((first, small), (second, large)):
        assert c[rows, sol.choice].sum() <= budget
        assert sol.quality <= sol.bound + 1e-9  # the LP bounds every integral assignment
    assert second.quality >= first.quality - 1e-9
    assert second.lam <= first.lam


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(instances(), st.floats(0, 1), st.floats(0, 1))
def test_a_higher_quality_target_never_costs_less_and_is_always_met(inst, a, b):
    q, c = inst
    best = q.max(axis=1).mean()
    low, high = sorted((a * best, b * best))
    first, second = solve(q, c, quality_target=low), solve(q, c, quality_target=high)
    rows = np.arange(len(q))
    for sol, target in ((first, low), (second, high)):
        assert q[rows, sol.choice].mean() >= target - 1e-12
        assert sol.cost >= sol.bound - 1e-9
    assert second.cost >= first.cost - 1e-9


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(instances(), st.floats(0, 1), st.data())
def test_capacities_and_budget_are_never_violated(inst, a, data):
    q, c = inst
    n, m = q.shape
    caps = np.array(data.draw(st.lists(st.integers(0, n), min_size=m, max_size=m)))
    lo, hi = _span(c)
    budget = lo + a * (hi - lo)
    try:
        sol = solve(q, c, budget=budget, capacity=caps)
    except Infeasible:
        # Only when the capacities admit too few rows or the cheapest rows that fit them overspend.
        assert caps.sum() < n or _best_within(c, caps) > budget + 1e-12
        return
    assert c[np.arange(n), sol.choice].sum() <= budget
    assert (np.bincount(sol.choice, minlength=m) <= caps).all()


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(instances(), st.floats(0, 1), st.data())
def test_capacities_and_quality_target_are_never_violated(inst, a, data):
    q, c = inst
    n, m = q.shape
    caps = np.array(data.draw(st.lists(st.integers(0, n), min_size=m, max_size=m)))
    target = a * q.max(axis=1).mean()
    try:
        sol = solve(q, c, quality_target=target, capacity=caps)
    except Infeasible:
        assert caps.sum() < n or -_best_within(-q, caps) < target * n - 1e-9 * max(1.0, target * n)
        return
    assert q[np.arange(n), sol.choice].sum() >= target * n - 1e-9 * max(1.0, target * n)  # float rounding
    assert (np.bincount(sol.choice, minlength=m) <= caps).all()


def _best_within(c, caps):
    """The least total of c over assignments within the capacities (tiny instances: exact by LP)."""
    from scipy import sparse
    from scipy.optimize import linprog

    n, m = c.shape
    res = linprog(c.ravel(), A_ub=sparse.kron(np.ones((1, n)), sparse.eye(m)), b_ub=caps,
                  A_eq=sparse.kron(sparse.eye(n), np.ones((1, m))), b_eq=np.ones(n), bounds=(0, 1), method="highs")
    return res.fun if res.status == 0 else np.inf
