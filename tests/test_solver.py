"""The batch dual solver against HiGHS's exact LP/MILP, on random and real RouterBench instances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from shared_core import Candidate, Router
from shared_core.fitting import fit_router
from shared_core.solver import Infeasible, budget_curve, capacity_counts, solve

GAP = 1e-3  # the bar: integral objective within 0.1 % of the LP bound


def _constraints(q, c, *, budget=None, target=None, caps=None):
    """HiGHS form of the problem over x (n·m, row-major): one model per row, budget or target, caps."""
    n, m = q.shape
    rows = [sparse.kron(sparse.eye(n), np.ones((1, m)))]
    lo, hi = [np.ones(n)], [np.ones(n)]
    if budget is not None:
        rows.append(sparse.csr_matrix(c.reshape(1, -1)))
        lo.append([-np.inf]), hi.append([budget])
    else:
        rows.append(sparse.csr_matrix(q.reshape(1, -1)))
        lo.append([target * n]), hi.append([np.inf])
    if caps is not None:
        rows.append(sparse.kron(np.ones((1, n)), sparse.eye(m)))
        lo.append(np.full(m, -np.inf)), hi.append(np.asarray(caps, float))
    return LinearConstraint(sparse.vstack(rows).tocsr(), np.concatenate(lo), np.concatenate(hi))


def _highs(q, c, *, budget=None, target=None, caps=None, feasible=None, integral=False):
    """Optimum of the LP relaxation (or the MILP) with HiGHS: max quality, or min cost for a target."""
    n, m = q.shape
    upper = np.ones(n * m) if feasible is None else feasible.ravel().astype(float)
    objective = -q.ravel() if budget is not None else c.ravel()
    res = milp(objective, constraints=_constraints(q, c, budget=budget, target=target, caps=caps),
               bounds=Bounds(np.zeros(n * m), upper), integrality=np.full(n * m, int(integral)))
    assert res.status == 0, res.message
    return -res.fun if budget is not None else res.fun


def _instance(seed, n=1500, m=8):
    """Random prompts × models where quality and price both rise with the model's tier (a real trade-off)."""
    rng = np.random.default_rng(seed)
    tier = np.sort(rng.random(m))
    q = np.clip(tier + 0.25 * rng.standard_normal((n, m)), 0, 1)
    c = np.exp(4 * tier) * rng.uniform(0.2, 2.0, (n, 1)) * rng.uniform(0.8, 1.2, (n, m)) * 1e-3
    return q, c


def _check(sol, q, c, *, budget=None, target=None, caps=None, feasible=None):
    """The assignment is integral and breaks no constraint."""
    n, m = q.shape
    r = np.arange(n)
    assert sol.choice.shape == (n,) and sol.choice.min() >= 0 and sol.choice.max() < m
    assert sol.cost == pytest.approx(c[r, sol.choice].sum()) and sol.quality == pytest.approx(q[r, sol.choice].sum())
    if budget is not None:
        assert c[r, sol.choice].sum() <= budget
    if target is not None:
        assert q[r, sol.choice].mean() >= target
    if caps is not None:
        assert (np.bincount(sol.choice, minlength=m) <= caps).all()
    if feasible is not None:
        assert feasible[r, sol.choice].all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.15, 0.4, 0.8])
def test_budget_mode_is_within_a_tenth_of_a_percent_of_the_lp(seed, share):
    q, c = _instance(seed)
    budget = c.min(axis=1).sum() + share * (c.max(axis=1).sum() - c.min(axis=1).sum())
    sol = solve(q, c, budget=budget)
    lp = _highs(q, c, budget=budget)
    _check(sol, q, c, budget=budget)
    assert sol.bound == pytest.approx(lp, rel=1e-7)  # the dual search is exact
    assert sol.quality >= (1 - GAP) * lp


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("target", [0.45, 0.6, 0.7])
def test_quality_target_mode_is_within_a_tenth_of_a_percent_of_the_lp(seed, target):
    q, c = _instance(seed)
    sol = solve(q, c, quality_target=target)
    lp = _highs(q, c, target=target)
    _check(sol, q, c, target=target)
    assert sol.bound == pytest.approx(lp, rel=1e-7)
    assert sol.cost <= (1 + GAP) * lp


@pytest.mark.parametrize("seed", [0, 1])
def test_capacities_hold_and_stay_near_the_lp(seed):
    q, c = _instance(seed, n=3000, m=6)
    caps = np.array([1000, 1000, 750, 600, 400, 250])  # the best models are scarce
    budget = 0.5 * c.max(axis=1).sum()
    sol = solve(q, c, budget=budget, capacity=caps)
    lp = _highs(q, c, budget=budget, caps=caps)
    _check(sol, q, c, budget=budget, caps=caps)
    assert sol.bound >= lp - 1e-6 * lp  # weak duality: the dual value bounds the LP from above
    assert sol.quality >= (1 - GAP) * lp
    assert sol.mu[-1] > 0  # the scarcest model is priced

    sol = solve(q, c, quality_target=0.55, capacity=caps)
    lp = _highs(q, c, target=0.55, caps=caps)
    _check(sol, q, c, target=0.55, caps=caps)
    assert sol.bound <= lp * (1 + 1e-6)
    assert sol.cost <= (1 + GAP) * lp


def test_feasibility_mask_is_respected():
    q, c = _instance(3, n=600, m=5)
    feasible = np.random.default_rng(3).random(q.shape) > 0.3
    feasible[np.arange(len(q)), np.random.default_rng(4).integers(0, 5, len(q))] = True
    budget = 0.3 * np.where(feasible, c, 0).max(axis=1).sum()
    sol = solve(q, c, budget=budget, feasible=feasible)
    _check(sol, q, c, budget=budget, feasible=feasible)
    assert sol.quality >= (1 - GAP) * _highs(q, c, budget=budget, feasible=feasible)
    caps = np.full(5, 150)
    sol = solve(q, c, budget=2 * budget, capacity=caps, feasible=feasible)
    _check(sol, q, c, budget=2 * budget, caps=caps, feasible=feasible)


@pytest.fixture(scope="module")
def real(routerbench):
    """RouterBench's test split: true 0/1 correctness and recorded cost of every model."""
    test = routerbench.subset("test")
    return np.nan_to_num(test.quality, nan=0.0), test.cost


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_real_instance_with_true_labels_matches_the_lp(real, fraction):
    q, c = real
    budget = fraction * c[:, 4].sum()  # column 4 is gpt-4-1106-preview
    sol = solve(q, c, budget=budget)
    lp = _highs(q, c, budget=budget)
    _check(sol, q, c, budget=budget)
    assert sol.quality >= (1 - GAP) * lp


def test_real_instance_matches_the_exact_milp_on_a_sample(real):
    q, c = real
    rows = np.random.default_rng(0).choice(len(q), 250, replace=False)
    q, c = q[rows], c[rows]
    budget = 0.1 * c[:, 4].sum()
    sol = solve(q, c, budget=budget)
    best = _highs(q, c, budget=budget, integral=True)
    _check(sol, q, c, budget=budget)
    assert sol.quality >= (1 - GAP) * best


@pytest.mark.parametrize("target", [0.85, 0.95])
def test_real_quality_target_matches_the_exact_milp(real, target):
    # On 0/1 labels the LP's one fractional prompt is worth ~0.1–0.2 % of the cost, so the
    # integer optimum, not the LP bound, is the bar.
    q, c = real
    sol = solve(q, c, quality_target=target)
    _check(sol, q, c, target=target)
    assert sol.cost <= (1 + GAP) * _highs(q, c, target=target, integral=True)


def test_real_instance_with_scarce_frontier_models(real):
    q, c = real
    caps = np.full(q.shape[1], len(q))
    caps[[0, 2, 3, 4]] = int(0.05 * len(q))  # gpt-3.5, claude-v1, claude-v2, gpt-4: 5 % each
    budget = 0.25 * c[:, 4].sum()
    sol = solve(q, c, budget=budget, capacity=caps)
    _check(sol, q, c, budget=budget, caps=caps)
    assert sol.quality >= (1 - GAP) * _highs(q, c, budget=budget, caps=caps)


def test_real_predictions_quality_target(routerbench):
    train, test = routerbench.subset("train"), routerbench.subset("test")
    est = fit_router(train, "prior").estimate(test.prompts)
    target = 0.8
    sol = solve(est.quality, est.cost, quality_target=target)
    _check(sol, est.quality, est.cost, target=target)
    assert sol.cost <= (1 + GAP) * _highs(est.quality, est.cost, target=target)


def test_ample_budget_picks_each_rows_best_model_and_prices_money_at_zero():
    q, c = _instance(5, n=300, m=4)
    sol = solve(q, c, budget=c.sum())
    assert sol.lam == 0 and sol.quality == pytest.approx(q.max(axis=1).sum())


def test_exact_ties_go_to_the_cheaper_model():
    q = np.array([[0.8, 0.8, 0.5]])
    c = np.array([[2.0, 1.0, 0.5]])
    assert solve(q, c, budget=5.0).choice.tolist() == [1]


def test_impossible_problems_raise_infeasible():
    q, c = _instance(6, n=100, m=3)
    with pytest.raises(Infeasible, match="below the cheapest"):
        solve(q, c, budget=0.5 * c.min(axis=1).sum())
    with pytest.raises(Infeasible, match="above the best reachable"):
        solve(q, c, quality_target=q.max(axis=1).mean() + 0.01)
    with pytest.raises(Infeasible, match="capacities admit 90 rows"):
        solve(q, c, budget=c.sum(), capacity=np.array([30, 30, 30]))
    only_first = np.zeros(q.shape, dtype=bool)
    only_first[:, 0] = True
    with pytest.raises(Infeasible, match="capacities"):
        solve(q, c, budget=c.sum(), capacity=np.array([50, 100, 100]), feasible=only_first)
    with pytest.raises(Infeasible, match=r"rows \[0\] have no feasible model"):
        solve(q, c, budget=c.sum(), feasible=np.arange(100)[:, None] * np.ones((1, 3)) > 0)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of budget"),
    ({"budget": 1.0, "quality_target": 0.5}, "exactly one of budget"),
    ({"budget": -1.0}, "budget must be a finite number >= 0"),
    ({"budget": float("nan")}, "budget must be a finite number >= 0"),
    ({"quality_target": float("inf")}, "quality_target must be finite"),
    ({"budget": 1.0, "capacity": np.array([1, 2])}, "capacity must be 3 counts"),
])
def test_bad_arguments_are_named(kwargs, match):
    q, c = _instance(7, n=10, m=3)
    with pytest.raises(ValueError, match=match):
        solve(q, c, **kwargs)


def test_bad_arrays_are_named():
    with pytest.raises(ValueError, match="one shape"):
        solve(np.ones((3, 2)), np.ones((3, 3)), budget=1.0)
    with pytest.raises(ValueError, match="cost must be finite and >= 0"):
        solve(np.ones((2, 2)), np.array([[1.0, -1.0], [1.0, 1.0]]), budget=1.0)
    with pytest.raises(ValueError, match="quality must be finite"):
        solve(np.array([[np.nan, 1.0]]), np.ones((1, 2)), budget=1.0)


@pytest.mark.parametrize("capacity", [None, np.array([100, 100, 100])])
def test_a_target_whose_sum_overflows_is_unreachable_or_met_by_anything(capacity):
    q, c = _instance(6, n=100, m=3)
    with pytest.raises(Infeasible, match="above the best reachable"):
        solve(q, c, quality_target=1e308, capacity=capacity)  # its sum over 100 rows is inf
    cheapest = solve(q, c, quality_target=-1e308, capacity=capacity)
    assert cheapest.choice.tolist() == c.argmin(axis=1).tolist()


def test_budget_curve_prices_every_budget_like_the_solver():
    q, c = _instance(8, n=800, m=6)
    spend, lams = budget_curve(q, c)
    assert np.all(np.diff(spend) < 0) and np.all(np.diff(lams) >= 0) and lams[0] == 0
    for share in [0.05, 0.3, 0.7]:
        budget = spend[-1] + share * (spend[0] - spend[-1])
        first = int(np.argmax(spend <= budget))
        assert solve(q, c, budget=budget).lam == lams[first]


def test_capacity_counts_reads_shares_and_counts():
    names = ["a", "b", "c"]
    assert capacity_counts({"a": 0.25, "c": 3}, names, 10).tolist() == [2, 10, 3]
    assert capacity_counts(None, names, 10) is None
    with pytest.raises(ValueError, match="unknown candidates"):
        capacity_counts({"z": 1}, names, 10)
    with pytest.raises(ValueError, match="use an int for a count"):
        capacity_counts({"a": 2.5}, names, 10)
    with pytest.raises(ValueError, match="count >= 0"):
        capacity_counts({"a": -1}, names, 10)


def test_router_route_batch_plans_within_budget_and_capacities(routerbench):
    train, test = routerbench.subset("train"), routerbench.subset("test")
    router = fit_router(train, "prior", candidates=train.candidates(max_output_tokens=1024))
    est = router.estimate(test.prompts)
    budget = 0.25 * est.cost[:, est.candidates.index("gpt-4-1106-preview")].sum()
    plan = router.route_batch(test.prompts, budget=budget, capacities={"gpt-4-1106-preview": 0.05})
    assert len(plan.models) == len(test.prompts)
    assert plan.solution.cost <= budget
    assert plan.models.count("gpt-4-1106-preview") <= int(0.05 * len(test.prompts))
    unconstrained = router.route_batch(test.prompts, budget=budget)
    assert unconstrained.models.count("gpt-4-1106-preview") > plan.models.count("gpt-4-1106-preview")
    assert unconstrained.solution.quality >= plan.solution.quality  # a constraint never helps
    target = router.route_batch(test.prompts, quality_target=0.8)
    assert target.solution.mean_quality >= 0.8


def test_route_batch_skips_candidates_whose_context_window_is_too_small():
    router = Router([
        Candidate(name="small-window", input_price=0.1, output_price=0.1, prior_quality=0.9, context_window=50),
        Candidate(name="wide", input_price=10, output_price=10, prior_quality=0.5),
    ])
    prompts = ["short question", "word " * 200]
    plan = router.route_batch(prompts, budget=1.0)
    assert plan.models == ["small-window", "wide"]


def test_capacities_that_force_a_permutation_still_find_the_feasible_assignment():
    # Found by Hypothesis: every column full (capacity 1 each, three rows); the repair moves find
    # nothing to do, but a zero-cost assignment exists (row 1 → col 0 or 2, row 2 → the other).
    q = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
    c = np.array([[0.0, 0.0, 0.0], [0.0, 0.25, 0.0], [0.0, 0.25, 1.0]])
    sol = solve(q, c, budget=0.15625, capacity=np.array([1, 1, 1]))
    assert c[np.arange(3), sol.choice].sum() <= 0.15625
    assert sorted(sol.choice.tolist()) == [0, 1, 2]
