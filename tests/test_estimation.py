"""Estimation apart from decisions: one lineup per request, learning that never holds a decision up."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from shared_core import Budget, Candidate, Router
from shared_core.estimation import CandidatePool, Lineup
from shared_core.quality import KNNQuality

RNG = np.random.default_rng(7)
TRAIN = [f"question {i} about {'maths' if i % 2 else 'history'} and topic {i % 13}" for i in range(120)]


class Bag:
    """A tiny deterministic embedder: word hashes into 16 buckets."""

    def transform(self, texts):
        X = np.zeros((len(texts), 16))
        for i, t in enumerate(texts):
            for w in t.split():
                X[i, sum(map(ord, w)) % 16] += 1.0
        return X + 1e-3


def candidate(name: str, price: float) -> Candidate:
    return Candidate(name=name, input_price=price, output_price=2 * price, context_window=8_000,
                     max_output_tokens=256)


def knn_router(**kwargs) -> Router:
    names = ["small", "medium", "large"]
    Y = RNG.random((len(TRAIN), 3))
    quality = KNNQuality(k=10).fit(Bag().transform(TRAIN), Y, names)
    return Router([candidate(n, p) for n, p in zip(names, (0.1, 1.0, 10.0), strict=True)],
                  quality=quality, embedder=Bag(), **kwargs)


def test_a_lineup_is_a_snapshot_that_later_changes_leave_alone():
    router = knn_router()
    before = router.pool.lineup
    router.add_candidate(candidate("new", 0.5), TRAIN[:20], RNG.random(20))
    assert before.names == ("small", "medium", "large")
    assert router.pool.lineup.names == ("small", "medium", "large", "new")
    assert isinstance(before, Lineup) and before.candidate("large").input_price == 10.0


def test_decisions_made_while_candidates_come_and_go_are_each_consistent():
    router = knn_router()
    router.set_budget("s", Budget(usd=1_000.0))
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        try:
            for i in range(30):
                name = f"extra-{i}"
                router.add_candidate(candidate(name, 0.3), TRAIN[:15], RNG.random(15))
                router.remove_candidate(name)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    thread = threading.Thread(target=churn)
    thread.start()
    decisions = 0
    while not stop.is_set() or decisions < 50:
        d = router.decide("a question about maths and topic 3", "s")
        # Every per-candidate field of one decision comes from one lineup.
        assert set(d.quality) == set(d.cost) == set(d.input_tokens)
        assert set(d.ranking) <= set(d.quality) and d.chosen in d.quality
        router.release(d)
        decisions += 1
    thread.join()
    assert not errors, errors
    assert router.pool.lineup.names == ("small", "medium", "large")
    state = router.budget_state("s")
    assert state is not None and state.reserved == 0.0


class SlowToLearn(KNNQuality):
    """k-NN whose observe takes half a second (a memory growing its buffers, say)."""

    def observe(self, X, model, y):
        time.sleep(0.5)
        super().observe(X, model, y)


def test_slow_learning_does_not_hold_up_decisions():
    names = ["small", "large"]
    quality = SlowToLearn(k=5).fit(Bag().transform(TRAIN), RNG.random((len(TRAIN), 2)), names)
    router = Router([candidate("small", 0.1), candidate("large", 10.0)], quality=quality, embedder=Bag())
    first = router.decide("question 4 about history")
    learner = threading.Thread(target=router.feedback, args=(first, 1.0))
    learner.start()
    time.sleep(0.05)  # the feedback is now inside observe
    started = time.perf_counter()
    router.decide("question 5 about maths")
    waited = time.perf_counter() - started
    learner.join()
    assert waited < 0.3, f"a decision waited {waited:.2f} s for feedback to be learnt"
    assert len(quality.feedback_rows_) == 1


def test_predictors_are_checked_by_protocol():
    class Frozen:
        """Predicts, but can neither take in models nor learn online."""

        models_ = ["small"]

        def fit(self, X, Y, models):
            return self

        def predict(self, X):
            return np.full((len(X), 1), 0.5)

    pool = CandidatePool([candidate("small", 0.1)], quality=Frozen(), embedder=Bag())
    with pytest.raises(TypeError, match="cannot take in new models"):
        pool.add(candidate("new", 1.0), np.ones((2, 16)), np.ones(2))
    with pytest.raises(TypeError, match="does not learn online"):
        pool.observe("a prompt", "small", 1.0)
    lineup, q, out = pool.predict(np.ones((3, 16)))
    assert lineup.names == ("small",) and q.shape == (3, 1) and out.shape == (3, 1)


def test_estimate_reports_each_candidates_room_and_the_batch_plan_honours_it():
    small = Candidate(name="small", input_price=0.1, output_price=0.2, context_window=60, max_output_tokens=50,
                      prior_quality=0.4)
    large = Candidate(name="large", input_price=1.0, output_price=2.0, context_window=8_000,
                      max_output_tokens=256, prior_quality=0.9)
    router = Router([small, large])
    prompts = ["short one", "word " * 200]
    est = router.estimate(prompts)
    assert est.output_caps.shape == (2, 2)
    assert est.output_caps[0, 0] == 50  # its own limit, the window has room
    assert est.output_caps[1, 0] < 1  # 200 words leave the 60-token window no room
    plan = router.route_batch(prompts, budget=1.0)
    assert plan.models[1] == "large"


def test_a_fallback_skips_a_candidate_removed_since_the_decision():
    router = Router([Candidate(name=n, input_price=p, output_price=p, prior_quality=q)
                     for n, p, q in (("a", 10.0, 0.9), ("b", 1.0, 0.8), ("c", 0.1, 0.5))],
                    default_budget=Budget(usd=10.0))
    d = router.decide("hello", "s")
    assert d.ranking == ("a", "b", "c")
    router.remove_candidate("c")  # during the call: a rollout takes one model away
    following = router.reroute(d, RuntimeError("503"))
    assert following is not None and following.chosen == "b"
    router.remove_candidate("b")
    assert router.reroute(following, RuntimeError("503")) is None  # nothing left to try, not a KeyError
    assert router.budget_state("s").reserved == 0


def test_a_request_is_held_with_the_lineup_it_was_priced_with():
    # A tight budget makes the reservation lower the cap: it must do so with the candidate the
    # request was priced with, even when that candidate is removed in the meantime.
    router = Router([Candidate(name="a", input_price=1.0, output_price=60.0, prior_quality=0.9,
                               max_output_tokens=4_096, context_window=8_000),
                     Candidate(name="b", input_price=1.0, output_price=60.0, prior_quality=0.5,
                               max_output_tokens=4_096, context_window=8_000)],
                    default_budget=Budget(usd=0.1))
    predict = router.pool.predict

    def predict_then_remove(X):
        out = predict(X)
        if "a" in router.pool.lineup.index:
            router.remove_candidate("a")
        return out

    router.pool.predict = predict_then_remove  # type: ignore[method-assign]
    d = router.decide("hello", "s")
    assert d.chosen == "a" and d.cap_lowered
    assert d.reserved == pytest.approx(router.priced(d).worst_case_cost(d.input_tokens["a"], d.output_caps["a"]))


def test_no_prompts_ask_the_predictors_nothing():
    class Strict(KNNQuality):
        def predict(self, X):  # as scikit-learn's estimators do
            if len(X) == 0:
                raise ValueError("Found array with 0 sample(s)")
            return super().predict(X)

    names = ["small", "medium", "large"]
    quality = Strict(k=10).fit(Bag().transform(TRAIN), RNG.random((len(TRAIN), 3)), names)
    router = Router([candidate(n, p) for n, p in zip(names, (0.1, 1.0, 10.0), strict=True)],
                    quality=quality, embedder=Bag())
    estimate = router.estimate([])
    assert estimate.quality.shape == estimate.cost.shape == (0, 3)
