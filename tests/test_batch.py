"""Batch routing in bounded memory (shared_core.batch): chunked estimation, one solve, today's plan."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from shared_core import batch
from shared_core.errors import RoutingError
from shared_core.evaluate import reference_column
from shared_core.feasibility import output_caps
from shared_core.fitting import fit_router
from shared_core.solver import capacity_counts, solve


def whole_batch(router, prompts, est=None, **goal):
    """The plan as Router.route_batch made it before: one estimate of every prompt, then the solver."""
    capacities = goal.pop("capacities", None)
    est = router.estimate(prompts) if est is None else est
    windows = np.array([router.candidate(n).context_window for n in est.candidates], dtype=np.float64)
    limits = np.array([router.candidate(n).max_output_tokens for n in est.candidates], dtype=np.float64)
    solution = solve(est.quality, est.cost, capacity=capacity_counts(capacities, est.candidates, len(prompts)),
                     feasible=output_caps(est.input_tokens, limits, windows, None) >= 1, **goal)
    return est, solution


@pytest.fixture(scope="module")
def routers(routerbench, llmrouter):
    """The k-NN router (the predictor `auto` picks on RouterBench) fitted on each dataset's training split."""
    return {name: fit_router(data.subset("train"), "knn", warm_start=False) for name, data in
            (("routerbench", routerbench), ("llmrouter", llmrouter))}


@pytest.mark.slow
@pytest.mark.parametrize("dataset, chunk_size", [("routerbench", 1000), ("llmrouter", 97)])
def test_chunked_routing_gives_the_plan_of_the_whole_batch(routers, routerbench, llmrouter, dataset, chunk_size):
    data = {"routerbench": routerbench, "llmrouter": llmrouter}[dataset]
    router, prompts = routers[dataset], data.prompts
    est = router.estimate(prompts)
    reference_cost = float(est.cost[:, reference_column(data.quality)].sum())
    top = data.models[reference_column(data.quality)]
    goals = [dict(budget=0.25 * reference_cost), dict(quality_target=0.95 * est.quality.max(axis=1).mean()),
             dict(budget=0.5 * reference_cost, capacities={top: 0.1})]
    for goal in goals:
        plan = batch.route_batch(router, prompts, chunk_size=chunk_size, **goal)
        expected_est, expected = whole_batch(router, prompts, est, **goal)
        np.testing.assert_array_equal(plan.solution.choice, expected.choice)
        assert plan.models == [expected_est.candidates[j] for j in expected.choice]
        assert (plan.solution.lam, plan.solution.cost, plan.solution.quality, plan.solution.bound) == \
            (expected.lam, expected.cost, expected.quality, expected.bound)
        np.testing.assert_array_equal(plan.solution.mu, expected.mu)
        # The returned estimate is the whole batch's, field by field.
        assert plan.estimate.candidates == expected_est.candidates
        for field in ("quality", "cost", "input_tokens", "output_tokens"):
            np.testing.assert_array_equal(getattr(plan.estimate, field), getattr(expected_est, field))
            assert getattr(plan.estimate, field).shape == (len(prompts), len(data.models))


def test_router_estimate_sees_at_most_one_chunk_at_a_time(routers, test_split, monkeypatch):
    router = routers["routerbench"]
    sizes = []
    original = router.estimate
    monkeypatch.setattr(router, "estimate", lambda prompts, tokens=None: sizes.append(len(prompts)) or
                        original(prompts, tokens))
    plan = batch.route_batch(router, test_split.prompts, budget=1.0, chunk_size=300)
    assert sizes == [300, 300, 300, 46] and len(plan.models) == 946


def test_peak_memory_grows_far_less_than_estimating_the_whole_batch(routers, routerbench):
    """Python-traced peak (NumPy arrays included) while routing 1,600 prompts: chunked vs one estimate."""
    router, prompts = routers["routerbench"], routerbench.prompts[:1600]
    router.route_batch(prompts[:50], budget=1.0)  # load the encodings before measuring

    def peak(fn):
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole = peak(lambda: whole_batch(router, prompts, budget=1.0))
    chunked = peak(lambda: batch.route_batch(router, prompts, budget=1.0, chunk_size=200))
    # Measured: ~47 KiB a prompt in one estimate; the chunked peak is one chunk's temporaries plus
    # about 1 KiB a prompt of kept arrays.
    assert whole > 30 * 1024 * len(prompts)
    assert chunked < whole / 4


def test_given_input_tokens_are_used_chunk_by_chunk(routers, test_split):
    router, prompts = routers["routerbench"], test_split.prompts[:250]
    tokens = np.arange(1, 251, dtype=np.float64) * 10
    plan = batch.route_batch(router, prompts, budget=0.5, input_tokens=tokens, chunk_size=100)
    np.testing.assert_array_equal(plan.estimate.input_tokens, np.tile(tokens[:, None], (1, len(router.candidates))))
    np.testing.assert_array_equal(plan.estimate.cost, router.estimate(prompts, tokens).cost)


def test_a_prompt_too_long_for_a_window_is_never_sent_there(routers, test_split):
    router, prompts = routers["routerbench"], test_split.prompts[:10]
    tokens = np.full((10, len(router.candidates)), 100.0)
    before = batch.route_batch(router, prompts, budget=100.0, input_tokens=tokens, chunk_size=4)
    j = before.solution.choice[3]
    tokens[3, j] = router.candidates[j].context_window  # no room left for output in its window
    after = batch.route_batch(router, prompts, budget=100.0, input_tokens=tokens, chunk_size=4)
    assert after.models[3] != before.models[3]
    assert after.models[:3] + after.models[4:] == before.models[:3] + before.models[4:]


def test_bad_batches_are_refused_with_the_reason(routers, test_split):
    router = routers["routerbench"]
    prompts = list(test_split.prompts[:30])
    prompts[23] = None
    with pytest.raises(RoutingError, match=r"prompts\[23\] must be str, got NoneType"):
        batch.route_batch(router, prompts, budget=1.0, chunk_size=10)
    with pytest.raises(ValueError, match="at least one prompt"):
        batch.route_batch(router, [], budget=1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        batch.route_batch(router, test_split.prompts[:5], budget=1.0, chunk_size=0)
    with pytest.raises(ValueError, match=r"input_tokens must have shape \(5,\)"):
        batch.route_batch(router, test_split.prompts[:5], budget=1.0, input_tokens=np.ones(4))


def test_candidates_changing_between_chunks_are_refused(routers, test_split, monkeypatch):
    router = routers["routerbench"]
    original, calls = router.estimate, []

    def estimate(prompts, tokens=None):
        est = original(prompts, tokens)
        calls.append(1)
        if len(calls) == 2:  # as if a candidate were removed while the batch was being estimated
            return type(est)(**{**est.__dict__, "candidates": est.candidates[:-1] + ["newcomer"]})
        return est

    monkeypatch.setattr(router, "estimate", estimate)
    with pytest.raises(RoutingError, match="candidates changed"):
        batch.route_batch(router, test_split.prompts[:20], budget=1.0, chunk_size=10)


def test_the_collector_keeps_only_what_the_solver_reads(routers, test_split):
    router = routers["routerbench"]
    collector = batch.EstimateCollector(router, keep_all=False)
    for lo in range(0, 100, 25):
        collector.add(test_split.prompts[lo:lo + 25])
    assert collector.n == 100 and set(collector._parts) == {"quality", "cost", "feasible"}
    quality, cost, feasible = collector.arrays()
    est = router.estimate(test_split.prompts[:100])
    np.testing.assert_array_equal(quality, est.quality)
    np.testing.assert_array_equal(cost, est.cost)
    assert quality.dtype == cost.dtype == np.float64 and feasible.dtype == bool and feasible.all()
    with pytest.raises(RuntimeError, match="already taken"):
        collector.arrays()
    lean = batch.EstimateCollector(router, keep_all=False)
    lean.add(test_split.prompts[:5])
    with pytest.raises(RuntimeError, match="kept only the solver's arrays"):
        lean.estimate()
