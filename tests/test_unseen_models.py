"""Unseen models (UniRoute): add a model from a small profile set without refitting; remove it at once."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from shared_core.embed import TfidfSvdEmbedder
from shared_core.evaluate import deferral_curve, reference_column
from shared_core.fitting import fit_router
from shared_core.router import Router

HELD_OUT = ["gpt-3.5-turbo-1106", "claude-v2", "meta/llama-2-70b-chat", "WizardLM/WizardLM-13B-V1.2"]
PROFILE = 400


class Memoised:
    """The fitted embedder, embedding each distinct text once for the whole test session."""

    def __init__(self, inner: TfidfSvdEmbedder) -> None:
        self.inner, self.components_, self.cache = inner, inner.components_, {}

    def fit(self, texts):
        raise AssertionError("the embedder must not be refitted")

    def transform(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.transform(missing), strict=False))
        return np.array([self.cache[t] for t in texts])


@pytest.fixture(scope="session")
def embedder(train):
    # Words only, 64 dimensions: the claim compares two routers on one embedder, and this one fits fast.
    return Memoised(TfidfSvdEmbedder(dim=64, char_ngrams=None).fit(train.prompts))


@pytest.fixture(scope="session")
def seven(train):
    """The training split without the held-out models."""
    idx = [j for j, m in enumerate(train.models) if m not in HELD_OUT]
    return replace(
        train, models=[train.models[j] for j in idx], quality=train.quality[:, idx], cost=train.cost[:, idx],
        responses=[[row[j] for j in idx] for row in train.responses], _cache={},
    )


@pytest.fixture(scope="session")
def profile_rows(train):
    return np.random.default_rng(0).choice(len(train), PROFILE, replace=False)


def add_held_out(router: Router, train, rows: np.ndarray, with_lengths: bool = True) -> None:
    candidates = {c.name: c for c in train.candidates()}
    out = train.output_tokens()
    for m in HELD_OUT:
        j = train.models.index(m)
        router.add_candidate(candidates[m], [train.prompts[i] for i in rows], train.quality[rows, j],
                             profile_output_tokens=out[rows, j] if with_lengths else None)


def audc(router: Router, train, test) -> float:
    est = router.estimate(test.prompts)
    cols = [est.candidates.index(m) for m in test.models]
    ref_cost = float(np.nansum(test.cost[:, reference_column(train.quality)]))
    return deferral_curve(est.quality[:, cols], est.cost[:, cols], test.quality, test.cost, ref_cost).area()


@pytest.fixture(scope="session")
def cluster_seven(seven, embedder):
    return fit_router(seven, "cluster", embedder=embedder)


@pytest.fixture
def fresh(cluster_seven, embedder, seven):
    """A mutable copy of the 7-model cluster router."""
    return Router(seven.candidates(), quality=copy.deepcopy(cluster_seven.quality),
                  lengths=copy.deepcopy(cluster_seven.lengths), embedder=embedder)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cluster", "learned-map"])
def test_models_added_from_400_prompts_route_as_well_as_models_fitted_on_all(
    name, train, test_split, seven, embedder, profile_rows
):
    full = audc(fit_router(train, name, embedder=embedder), train, test_split)
    router = fit_router(seven, name, embedder=embedder)
    add_held_out(router, train, profile_rows)
    assert len(router.candidates) == len(train.models)
    assert abs(audc(router, train, test_split) - full) <= 0.01


def test_adding_a_model_refits_nothing(fresh, train, test_split, profile_rows):
    centers = fresh.quality.centers_.copy()
    projection = fresh.embedder.components_.copy()
    before = fresh.estimate(test_split.prompts[:100])
    add_held_out(fresh, train, profile_rows)
    after = fresh.estimate(test_split.prompts[:100])
    np.testing.assert_array_equal(fresh.quality.centers_, centers)
    np.testing.assert_array_equal(fresh.embedder.components_, projection)
    old = [after.candidates.index(m) for m in before.candidates]
    np.testing.assert_array_equal(after.quality[:, old], before.quality)
    np.testing.assert_array_equal(after.cost[:, old], before.cost)


def test_an_added_model_is_described_by_its_profile(fresh, train, test_split, profile_rows):
    add_held_out(fresh, train, profile_rows)
    est = fresh.estimate(test_split.prompts)
    for m in HELD_OUT:
        predicted = est.quality[:, est.candidates.index(m)].mean()
        actual = np.nanmean(train.quality[profile_rows, train.models.index(m)])
        assert abs(predicted - actual) < 0.05
    # Code prompts get long answers, multiple-choice letters short: learned from the profile answers.
    mbpp = test_split.task == "mbpp"
    lengths = est.output_tokens[:, est.candidates.index("gpt-3.5-turbo-1106")]
    assert lengths[mbpp].mean() > 10 * lengths[~mbpp].mean()


def test_without_profile_answers_a_new_model_is_expected_to_answer_as_long_as_the_others(
    fresh, train, test_split, profile_rows
):
    add_held_out(fresh, train, profile_rows, with_lengths=False)
    est = fresh.estimate(test_split.prompts[:50])
    known = [est.candidates.index(c.name) for c in fresh.candidates if c.name not in HELD_OUT]
    for m in HELD_OUT:
        np.testing.assert_allclose(est.output_tokens[:, est.candidates.index(m)],
                                   est.output_tokens[:, known].mean(axis=1))


def test_missing_profile_labels_are_skipped(fresh, train, profile_rows):
    j = train.models.index("claude-v2")
    labels = train.quality[profile_rows, j].copy()
    labels[labels == 0] = np.nan
    candidate = next(c for c in train.candidates() if c.name == "claude-v2")
    fresh.add_candidate(candidate, [train.prompts[i] for i in profile_rows], labels)
    q = fresh.estimate(train.prompts[:100]).quality[:, -1]
    assert q.min() > 0.98


def test_removing_a_candidate_stops_routing_to_it_at_once(fresh, train, test_split, profile_rows):
    add_held_out(fresh, train, profile_rows)
    before = fresh.estimate(test_split.prompts[:100])
    fresh.remove_candidate("gpt-4-1106-preview")
    after = fresh.estimate(test_split.prompts[:100])
    assert "gpt-4-1106-preview" not in after.candidates
    assert "gpt-4-1106-preview" not in fresh.quality.models_
    cols = [before.candidates.index(m) for m in after.candidates]
    np.testing.assert_array_equal(after.quality, before.quality[:, cols])
    assert all(fresh.decide(p).chosen != "gpt-4-1106-preview" for p in test_split.prompts[:20])
    with pytest.raises(KeyError, match="unknown candidate"):
        fresh.decide(test_split.prompts[0], model="gpt-4-1106-preview")
    # And it can come back, from a profile.
    gpt4 = next(c for c in train.candidates() if c.name == "gpt-4-1106-preview")
    j = train.models.index(gpt4.name)
    fresh.add_candidate(gpt4, [train.prompts[i] for i in profile_rows], train.quality[profile_rows, j])
    assert "gpt-4-1106-preview" in fresh.estimate(test_split.prompts[:1]).candidates


def test_bad_additions_are_refused_and_leave_the_router_as_it_was(fresh, train, profile_rows):
    prompts = [train.prompts[i] for i in profile_rows[:50]]
    candidates = {c.name: c for c in train.candidates()}
    with pytest.raises(ValueError, match="already routed"):
        fresh.add_candidate(candidates["gpt-4-1106-preview"], prompts, np.ones(50))
    with pytest.raises(ValueError, match="50 prompts but 49 labels"):
        fresh.add_candidate(candidates["claude-v2"], prompts, np.ones(49))
    with pytest.raises(ValueError, match="all NaN"):
        fresh.add_candidate(candidates["claude-v2"], prompts, np.full(50, np.nan))
    with pytest.raises(ValueError, match="at least one profile prompt"):
        fresh.add_candidate(candidates["claude-v2"], [], [])
    with pytest.raises(ValueError, match=">= 0"):
        fresh.add_candidate(candidates["claude-v2"], prompts, np.ones(50), profile_output_tokens=-np.ones(50))
    assert "claude-v2" not in fresh.quality.models_ and "claude-v2" not in fresh.lengths.models_
    assert [c.name for c in fresh.candidates] == [c.name for c in train.candidates() if c.name not in HELD_OUT]


def test_a_predictor_that_cannot_take_new_models_says_so(train, embedder):
    class Frozen:
        needs_embedding = False
        models_ = list(train.models)

        def predict(self, X):
            return np.full((len(X), len(self.models_)), 0.5)

    router = Router(train.candidates(), quality=Frozen())
    extra = train.candidates()[0].model_copy(update={"name": "new-model"})
    with pytest.raises(TypeError, match="cannot take in new models"):
        router.add_candidate(extra, ["a prompt"], [1.0])


def test_the_last_candidate_cannot_be_removed(train):
    one = replace(train, models=train.models[:1], quality=train.quality[:, :1], cost=train.cost[:, :1],
                  responses=[r[:1] for r in train.responses], _cache={})
    router = fit_router(one, "prior")
    with pytest.raises(ValueError, match="only candidate"):
        router.remove_candidate(train.models[0])
