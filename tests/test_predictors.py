"""Quality and length predictors on the RouterBench subset: routing quality, NaN handling, online learning."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from shared_core.embed import TfidfSvdEmbedder
from shared_core.evaluate import deferral_curve, reference_column
from shared_core.fitting import PREDICTORS, fit_prices, fit_router, make_predictor
from shared_core.length import HybridLength, LengthPrior
from shared_core.quality import (
    ClusterQuality,
    HybridQuality,
    KNNQuality,
    LearnedMapQuality,
    LogisticQuality,
    PriorQuality,
)
from shared_core.router import Router


@pytest.fixture(scope="session")
def embedder(train):
    return TfidfSvdEmbedder().fit(train.prompts)


@pytest.fixture(scope="session")
def X_train(embedder, train):
    return embedder.transform(train.prompts)


@pytest.fixture(scope="session")
def X_test(embedder, test_split):
    return embedder.transform(test_split.prompts)


@pytest.fixture(scope="session")
def fitted(train, X_train):
    """Every registered predictor, fitted on the training split."""
    return {name: make_predictor(name).fit(X_train, train.quality, train.models) for name in PREDICTORS}


@pytest.fixture(scope="session")
def lengths(train, X_train):
    return HybridLength().fit(X_train, train.output_tokens().astype(float), train.models)


@pytest.fixture
def router_for(fitted, lengths, embedder, train):
    """A fresh router around a copy of a fitted predictor (feedback changes it)."""
    def make(name: str) -> Router:
        return Router(train.candidates(max_output_tokens=1024), quality=copy.deepcopy(fitted[name]),
                      lengths=lengths, embedder=embedder)
    return make


@pytest.fixture(scope="session")
def default_router(train, embedder):
    return fit_router(train, "knn", embedder=embedder)


@pytest.fixture(scope="session")
def default_estimate(default_router, test_split):
    return default_router.estimate(test_split.prompts)


def audc(est, train, test) -> float:
    ref_cost = float(np.nansum(test.cost[:, reference_column(train.quality)]))
    return deferral_curve(est.quality, est.cost, test.quality, test.cost, ref_cost).area()


@pytest.mark.slow
def test_default_predictor_meets_the_audc_target_and_beats_the_prior(train, test_split, default_estimate):
    default = audc(default_estimate, train, test_split)
    prior = audc(fit_router(train, "prior").estimate(test_split.prompts), train, test_split)
    assert default >= 0.85
    assert default > prior + 0.02


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_predictions_are_qualities_per_model(name, fitted, train, X_test):
    predictor = fitted[name]
    q = predictor.predict(X_test)
    assert q.shape == (len(X_test), len(train.models))
    assert np.isfinite(q).all() and q.min() >= 0 and q.max() <= 1
    assert predictor.models_ == train.models
    assert isinstance(predictor.needs_embedding, bool)
    if not predictor.needs_embedding:  # a prompt-blind predictor: every prompt gets the same qualities
        assert np.allclose(q, q[0])


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_hyper_parameters_are_those_of_init(name, fitted):
    """get_params, clone and the saved state all carry the constructor's parameters, and only them."""
    predictor = fitted[name]
    twin = predictor.clone()
    assert twin.get_params() == predictor.get_params() and not hasattr(twin, "models_")
    state, arrays = predictor.get_state()
    assert type(predictor).from_state(state, arrays).get_params() == predictor.get_params()
    with pytest.raises(ValueError, match="no parameters"):
        twin.set_params(not_a_parameter=1)


@pytest.mark.parametrize("name, bad", [("knn", {"k": -1}), ("knn", {"shrinkage": float("inf")}), ("knn", {"k": 2.5}),
                                       ("hybrid", {"k": 0}), ("hybrid", {"gamma": 2.0}), ("parametric", {"C": 0.0}),
                                       ("parametric", {"C": "2"}), ("cluster", {"smoothing": float("inf")}),
                                       ("cluster", {"random_state": "abc"}), ("prior", {"default": float("nan")}),
                                       ("learned-map", {"l2": None}), ("knn", {"k": 5, "shrinkage": -1.0})])
def test_a_bad_parameter_set_on_a_fitted_predictor_is_refused_and_changes_nothing(name, bad, fitted, X_test):
    # A fitted predictor reads its parameters when it predicts: a bad one must not turn into NaN
    # predictions, or into a router that saves but will not load.
    predictor = fitted[name]
    params, before = predictor.get_params(), predictor.predict(X_test[:5])
    with pytest.raises(ValueError, match=list(bad)[-1]):
        predictor.set_params(**bad)
    assert predictor.get_params() == params
    np.testing.assert_array_equal(predictor.predict(X_test[:5]), before)


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_prompt_aware_predictors_tell_the_tasks_apart(name, fitted, train, test_split, X_test):
    """GPT-4's edge over Yi-34B is largest on Winogrande: a prompt-aware predictor must see that."""
    q = fitted[name].predict(X_test)
    gap = q[:, train.models.index("gpt-4-1106-preview")] - q[:, train.models.index("zero-one-ai/Yi-34B-Chat")]
    by_task = {t: gap[test_split.task == t].mean() for t in ("arc-challenge", "winogrande")}
    if not fitted[name].needs_embedding:
        assert by_task["winogrande"] == pytest.approx(by_task["arc-challenge"])
    else:
        assert by_task["winogrande"] > by_task["arc-challenge"] + 0.02


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_missing_labels_are_skipped_not_counted_as_wrong(name, train, X_train, X_test):
    """Hide every failure of one model: it must then look perfect, not partly wrong."""
    Y = train.quality[:800].copy()
    j = train.models.index("claude-v2")
    Y[Y[:, j] == 0, j] = np.nan
    q = make_predictor(name).fit(X_train[:800], Y, train.models).predict(X_test)[:, j]
    assert q.min() > 0.98


def test_knn_with_missing_labels_equals_knn_on_the_labelled_rows(train, X_train, X_test):
    """A model with a share of its labels missing averages the same share of k over its labelled rows."""
    Y = train.quality[:, :2].copy()
    Y[np.isnan(Y)] = 0.0
    hidden = np.arange(len(Y)) % 4 == 0
    Y[hidden, 1] = np.nan
    both = KNNQuality(k=100).fit(X_train, Y, ["a", "b"]).predict(X_test)[:, 1]
    k_b = round(100 * (~hidden).sum() / len(Y))
    alone = KNNQuality(k=k_b).fit(X_train[~hidden], Y[~hidden][:, [1]], ["b"]).predict(X_test)[:, 0]
    np.testing.assert_allclose(both, alone)


def test_knn_with_k_1_returns_a_training_prompts_own_labels(train, X_train):
    q = KNNQuality(k=1).fit(X_train, train.quality, train.models).predict(X_train[:50])
    labelled = ~np.isnan(train.quality[:50])
    np.testing.assert_array_equal(q[labelled], train.quality[:50][labelled])


def test_hybrid_is_the_gamma_blend_of_its_halves(fitted, X_test):
    hybrid = fitted["hybrid"]
    blend = hybrid.gamma * hybrid.parametric_.predict(X_test) + (1 - hybrid.gamma) * hybrid.knn_.predict(X_test)
    np.testing.assert_allclose(hybrid.predict(X_test), blend)
    np.testing.assert_allclose(hybrid.knn_.predict(X_test), fitted["knn"].predict(X_test))


def test_cluster_smoothing_pulls_toward_each_models_overall_mean(train, X_train, X_test):
    raw = ClusterQuality(smoothing=0.0).fit(X_train, train.quality, train.models)
    flat = ClusterQuality(smoothing=1e9).fit(X_train, train.quality, train.models)
    np.testing.assert_allclose(flat.predict(X_test), np.tile(np.nanmean(train.quality, axis=0), (len(X_test), 1)),
                               atol=1e-6)
    assigned = raw.assign(X_train).argmax(axis=1)
    k = int(np.bincount(assigned).argmax())
    np.testing.assert_allclose(raw.quality_[k], np.nanmean(train.quality[assigned == k], axis=0))


def test_learned_map_fits_the_training_labels_better_than_hard_clusters(train, X_train, fitted):
    def cross_entropy(q):
        y, ok = train.quality, ~np.isnan(train.quality)
        q = np.clip(q, 1e-6, 1 - 1e-6)
        return -np.mean(y[ok] * np.log(q[ok]) + (1 - y[ok]) * np.log(1 - q[ok]))

    hard, soft = fitted["cluster"], fitted["learned-map"]
    weights = soft.assign(X_train)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert cross_entropy(soft.predict(X_train)) < cross_entropy(hard.predict(X_train))


def test_parametric_learns_fractional_labels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    Y = np.column_stack([np.full(400, 0.3), (X[:, 0] > 0).astype(float)])
    q = LogisticQuality(C=10.0).fit(X, Y, ["constant", "signed"]).predict(X)
    assert abs(q[:, 0].mean() - 0.3) < 0.01
    assert q[X[:, 0] > 1, 1].mean() > 0.9 and q[X[:, 0] < -1, 1].mean() < 0.1


@pytest.mark.parametrize("cls", [PriorQuality, KNNQuality, LogisticQuality, HybridQuality, ClusterQuality,
                                 LearnedMapQuality])
def test_bad_input_is_rejected(cls):
    X = np.random.default_rng(0).normal(size=(30, 4))
    Y = np.random.default_rng(1).integers(0, 2, size=(30, 2)).astype(float)
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().predict(X)
    with pytest.raises(ValueError, match="rows"):
        cls().fit(X, Y[:10], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cls().fit(X, Y * 2, ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        cls().fit(X, Y, ["a", "a"])
    fitted = cls().fit(X, Y, ["a", "b"])
    with pytest.raises(KeyError, match="unknown model 'c'"):
        fitted.remove_model("c")
    if cls is not PriorQuality:
        with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
            fitted.predict(X[:, :3])


@pytest.mark.parametrize("name", ["knn", "cluster", "learned-map", "hybrid", "prior"])
def test_feedback_moves_the_prediction_for_similar_prompts(name, test_split, router_for):
    router = router_for(name)
    prompts = [p for p, t in zip(test_split.prompts, test_split.task, strict=False) if t == "mbpp"][:30]
    model = "gpt-4-1106-preview"
    j = [c.name for c in router.candidates].index(model)
    before = router.estimate(prompts).quality[:, j].mean()
    for prompt in prompts:
        router.feedback(router.decide(prompt, model=model), 0.0)
    after = router.estimate(prompts).quality[:, j].mean()
    assert after < before - 0.01


def test_knn_feedback_grows_the_memory_by_one_row_labelled_for_the_chosen_model(router_for):
    router = router_for("knn")
    rows = len(router.quality.memory_.X)
    decision = router.decide("Write a function to reverse the words of a sentence.", model="claude-v1")
    router.feedback(decision, 1.0)
    memory = router.quality.memory_
    assert len(memory.X) == rows + 1
    labels = memory.Y[-1]
    assert labels[router.quality.models_.index("claude-v1")] == 1.0
    assert np.isnan(np.delete(labels, router.quality.models_.index("claude-v1"))).all()


def test_feedback_needs_an_online_predictor_and_a_quality_in_range(router_for):
    router = router_for("parametric")
    decision = router.decide("What is 2 + 2?")
    with pytest.raises(TypeError, match="does not learn online"):
        router.feedback(decision, 1.0)
    knn = router_for("knn")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        knn.feedback(knn.decide("What is 2 + 2?"), 1.5)


def test_pre_call_cost_estimates_track_the_recorded_costs(test_split, default_router, default_estimate):
    assert isinstance(default_router.lengths, HybridLength)
    est = default_estimate
    cost = est.cost[:, [est.candidates.index(m) for m in test_split.models]]
    relative = np.abs(cost - test_split.cost) / test_split.cost
    assert np.median(relative, axis=0).max() < 0.05
    assert abs(cost.sum() - test_split.cost.sum()) / test_split.cost.sum() <= 0.05
    for j in range(len(test_split.models)):
        assert abs(cost[:, j].sum() - test_split.cost[:, j].sum()) / test_split.cost[:, j].sum() <= 0.05


def test_length_predictors_follow_the_answers(train, X_train, X_test, test_split):
    out = train.output_tokens().astype(float)
    mbpp = test_split.task == "mbpp"
    pred = HybridLength().fit(X_train, out, train.models).predict(X_test)
    gpt4 = train.models.index("gpt-4-1106-preview")
    # Code answers are long, multiple-choice letters short; the prior cannot tell them apart.
    assert pred[mbpp, gpt4].mean() > 10 * pred[~mbpp, gpt4].mean()
    prior = LengthPrior().fit(X_train, out, train.models).predict(X_test)
    assert np.ptp(prior[:, gpt4]) == 0
    with pytest.raises(ValueError, match=">= 0"):
        HybridLength().fit(X_train, -out, train.models)


def test_prices_are_learned_from_recorded_costs_without_a_price_table(train):
    unpriced = replace(train, prices=None, _cache={})
    fit = fit_prices(unpriced)
    for m, (p_in, p_out) in fit.prices.items():
        assert p_in == pytest.approx(train.prices[m][0], rel=1e-6)
        assert p_out == pytest.approx(train.prices[m][1], rel=1e-6)
        assert fit.r2[m] > 0.999999
    router = fit_router(unpriced, "prior")
    assert router.candidate("claude-v2").output_price == pytest.approx(24.0)


def test_prices_learned_without_responses_still_estimate_total_cost(train, test_split):
    bare = replace(train, prices=None, responses=None, _cache={})
    fit = fit_prices(bare)
    assert fit.assumed_output_tokens is not None
    for j, m in enumerate(test_split.models):
        p_in, p_out = fit.prices[m]
        estimate = (test_split.prompt_tokens() * p_in + fit.assumed_output_tokens * p_out) / 1e6
        assert abs(estimate.sum() - test_split.cost[:, j].sum()) / test_split.cost[:, j].sum() < 0.05


def test_unknown_predictor_names_the_known_ones():
    with pytest.raises(ValueError, match="choose one of"):
        make_predictor("oracle")
