"""The evaluation toolkit: curve definitions, reference points, budget runs and the fixed-λ baseline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared_core.evaluate import (
    Curve,
    batch_run,
    calibrate_lambda,
    deferral_curve,
    fixed_lambda_run,
    online_run,
    oracle_curve,
    prior_curve,
    realised,
    reference_column,
    replay_order,
    route_argmax,
    summarise,
)
from shared_core.fitting import fit_router


def test_curve_definitions_on_hand_made_points():
    # Points (cost fraction, accuracy); the 0.7 at 0.5 is dominated by the 0.8 at 0.3.
    curve = Curve(np.array([0.1, 0.3, 0.5, 0.9]), np.array([0.6, 0.8, 0.7, 0.9]), np.zeros(4))
    assert curve.a(0.05) == 0.6  # below every point: the cheapest point's accuracy
    assert curve.a(0.3) == 0.8 and curve.a(0.6) == 0.8 and curve.a(1.0) == 0.9
    assert curve.area() == pytest.approx(0.3 * 0.6 + 0.6 * 0.8 + 0.1 * 0.9)
    assert curve.area(0.5) == pytest.approx(0.3 * 0.6 + 0.2 * 0.8)
    assert curve.qnc(0.8) == 0.3 and curve.qnc(0.95) is None
    summary = summarise(curve, 0.8, [0.1, 0.25, 0.5])
    assert summary["audc"] == curve.area() and summary["audc50"] == curve.area(0.5) and summary["qnc"] == 0.3
    assert summary["accuracy_at"] == {"0.1": 0.6, "0.25": 0.6, "0.5": 0.8}
    assert summary["curve"] == [[0.1, 0.6], [0.3, 0.8], [0.5, 0.7], [0.9, 0.9]]


def test_deferral_curve_sweeps_from_lambda_zero_to_the_cheapest_model():
    rng = np.random.default_rng(0)
    q_true = (rng.random((200, 3)) < [0.5, 0.7, 0.9]).astype(float)
    c_true = np.tile([1.0, 2.0, 6.0], (200, 1))
    q_pred = np.tile([0.5, 0.7, 0.9], (200, 1)) + 0.1 * rng.standard_normal((200, 3))
    curve = deferral_curve(q_pred, c_true, q_true, c_true, reference_cost=c_true[:, 2].sum(), keep_choices=True)
    assert 0.0 in curve.lambdas and np.inf in curve.lambdas
    cheapest = curve.choices[list(curve.lambdas).index(np.inf)]
    assert (cheapest == 0).all()
    zero = curve.choices[list(curve.lambdas).index(0.0)]
    assert np.array_equal(zero, route_argmax(q_pred, c_true, 0.0))
    assert curve.x.min() == pytest.approx(1 / 6)  # all to the cheapest model
    for x, y, ch in zip(curve.x, curve.y, curve.choices, strict=False):  # every point is its choices, measured
        cost, acc = realised(ch, q_true, c_true)
        assert (x, y) == pytest.approx((cost / c_true[:, 2].sum(), acc))


@pytest.fixture(scope="module")
def split(routerbench):
    train, test = routerbench.subset("train"), routerbench.subset("test")
    ref = reference_column(train.quality)
    return train, test, ref, float(test.cost[:, ref].sum())


def test_reference_points_of_the_routerbench_readme(split):
    """The data README's figures: prompt-blind prior AUDC 0.769, oracle 0.968, GPT-4 the reference."""
    train, test, ref, ref_cost = split
    assert test.models[ref] == "gpt-4-1106-preview"
    prior = prior_curve(train.quality, train.cost, test.quality, test.cost, ref_cost)
    assert prior.area() == pytest.approx(0.769, abs=5e-4)
    assert oracle_curve(test.quality, test.cost, ref_cost).area() == pytest.approx(0.968, abs=5e-4)


def test_replay_orders():
    tasks = np.array(["b", "a", "b", "a", "c"], dtype=object)
    assert replay_order(tasks, "as-is").tolist() == [0, 1, 2, 3, 4]
    assert replay_order(tasks, "grouped").tolist() == [1, 3, 0, 2, 4]
    shuffled = replay_order(tasks, "random", seed=3)
    assert sorted(shuffled.tolist()) == [0, 1, 2, 3, 4] and np.array_equal(shuffled, replay_order(tasks, "random", 3))
    with pytest.raises(ValueError, match="unknown order 'sorted'"):
        replay_order(tasks, "sorted")


def test_calibrated_lambda_is_the_smallest_that_spends_within_the_target(split):
    train, _, ref, _ = split
    est = fit_router(train, "prior").estimate(train.prompts)
    target = 0.25 * train.cost[:, ref].sum()
    lam = calibrate_lambda(est.quality, est.cost, train.cost, target)
    rows = np.arange(len(train))

    def spend(x):
        return train.cost[rows, route_argmax(est.quality, est.cost, x)].sum()

    assert spend(lam) <= target < spend(lam * (1 - 1e-6))
    assert calibrate_lambda(est.quality, est.cost, train.cost, 1e9) == 0.0


def test_online_replay_never_looks_ahead(split):
    """Scrambling the truths of the rows not yet replayed cannot change any decision made before them."""
    train, test, ref, ref_cost = split
    router = fit_router(train, "prior", candidates=train.candidates(max_output_tokens=1024))
    budget = 0.25 * ref_cost
    order = replay_order(test.task, "random", seed=1)
    run = online_run(router, test, budget, 0.25, order="random", seed=1)
    later = order[500:]
    rng = np.random.default_rng(0)
    quality, cost = test.quality.copy(), test.cost.copy()
    quality[later] = rng.random((len(later), quality.shape[1]))
    cost[later] = 3 * rng.random((len(later), cost.shape[1]))
    scrambled = online_run(router, dataclasses.replace(test, quality=quality, cost=cost), budget, 0.25,
                           order="random", seed=1)
    assert np.array_equal(run.choice[order[:501]], scrambled.choice[order[:501]])
    assert not np.array_equal(run.choice, scrambled.choice)  # the scrambled costs did matter later


@pytest.fixture(scope="module")
def default_runs(split):
    """The shipped default predictor, warm-started on train, at 10 % and 50 % of the GPT-4 cost
    (benchmarks/budget_runs.py adds 25 % and the fixed-λ comparison)."""
    train, test, ref, ref_cost = split
    router = fit_router(train, "knn", candidates=train.candidates(max_output_tokens=1024))
    est = router.estimate(test.prompts)
    curve = deferral_curve(est.quality, est.cost, test.quality, test.cost, ref_cost)
    runs = {}
    for fraction in (0.1, 0.5):
        budget = fraction * ref_cost
        runs[fraction] = (batch_run(est, test, budget, fraction),
                          online_run(router, test, budget, fraction, order="grouped"))
    return curve, runs


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_budget_runs_of_the_default_predictor_hold_their_budgets(split, default_runs, fraction):
    _, test, _, ref_cost = split
    curve, runs = default_runs
    batch, online = runs[fraction]
    budget = fraction * ref_cost
    assert batch.spent_usd <= 1.02 * budget  # planned on estimates, paid at the recorded costs
    assert 0.95 * budget <= online.spent_usd <= budget + test.cost.max()
    assert online.refused == 0
    # Spending the budget as a whole beats the per-query router that spends no more (best λ in hindsight).
    assert batch.accuracy >= curve.a(batch.spent_usd / ref_cost)


def test_fixed_lambda_run_is_per_query_argmax(split):
    train, test, ref, ref_cost = split
    est = fit_router(train, "prior").estimate(test.prompts)
    run = fixed_lambda_run(est.quality, est.cost, test, 50.0, 0.25 * ref_cost, 0.25, "prior")
    assert np.array_equal(run.choice, route_argmax(est.quality, est.cost, 50.0))
    assert (run.spent_usd, run.accuracy) == pytest.approx(realised(run.choice, test.quality, test.cost))
    assert run.to_dict()["mode"] == "fixed-lambda" and run.name == "fixed-lambda@0.25"


def test_a_deferral_curve_refuses_nan_predictions_and_takes_one_lambda():
    q = np.array([[0.9, 0.5], [0.8, 0.6]])
    c = np.array([[1.0, 0.01], [1.0, 0.01]])
    truth = np.array([[1.0, 0.0], [1.0, 1.0]])
    bad = c.copy()
    bad[1, 0] = np.nan  # would send row 1 to column 0 at every λ, dearest first
    with pytest.raises(ValueError, match=r"c_pred has NaN in 1 rows \(first: \[1\]\)"):
        deferral_curve(q, bad, truth, c, 2.0)
    with pytest.raises(ValueError, match="n >= 1"):
        deferral_curve(q[:0], c[:0], truth[:0], c[:0], 2.0)
    one = deferral_curve(q, c, truth.tolist(), c.tolist(), 2.0, lambdas=0.0)  # a scalar λ, lists of truths
    assert one.x.tolist() == [0.01, 1.0] and one.y.tolist() == [0.5, 1.0]  # λ = ∞ (cheapest), then λ = 0
