"""`auto`: the predictor chosen on the user's own data by cross-validated AUDC (issue 14, item 2)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shared_core import Router
from shared_core.cli import main
from shared_core.fitting import AUTO, DEFAULT_PREDICTOR, fit_router, make_predictor
from shared_core.quality import HybridQuality, KNNQuality
from shared_core.selection import BASELINE, DEFAULT_GRID, PredictorSpec, select_predictor


@pytest.fixture(scope="module")
def sample_fit(train_sample):
    data = train_sample(600, 3)
    return data, fit_router(data, AUTO, warm_start=False)


@pytest.mark.slow
def test_auto_is_the_default_and_chooses_by_cross_validation(sample_fit):
    data, router = sample_fit
    assert DEFAULT_PREDICTOR == AUTO
    selection = router.quality.selection_
    assert {row["spec"] for row in selection.rows} == set(DEFAULT_GRID)
    assert [row["audc"] for row in selection.rows] == sorted((row["audc"] for row in selection.rows), reverse=True)
    chosen = next(row for row in selection.rows if row["spec"] == selection.best)
    # The baseline is kept unless another spec beats it by two paired standard errors.
    assert selection.best == BASELINE or chosen["gain"] > 2 * chosen["gain_se"] > 0
    fitted = make_predictor(selection.best.kind, **selection.best.kwargs)
    assert type(router.quality) is type(fitted)
    assert all(getattr(router.quality, k) == v for k, v in selection.best.params)
    # Real AUDCs on RouterBench: far above chance, below the oracle's ~0.97.
    assert all(0.6 < row["audc"] < 0.97 for row in selection.rows)


def test_the_choice_is_saved_with_the_router(sample_fit, tmp_path):
    _, router = sample_fit
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    best = router.quality.selection_.best
    assert type(loaded.quality) is type(router.quality)
    assert all(getattr(loaded.quality, k) == v for k, v in best.params)
    prompt = ["What is the derivative of x squared?"]
    np.testing.assert_allclose(loaded.estimate(prompt).quality, router.estimate(prompt).quality)


@pytest.mark.slow
def test_a_blended_hybrid_scores_as_a_fitted_one(train_sample):
    data = train_sample(300, 5)
    X = fit_router(data, "knn", warm_start=False).embedder.transform(data.prompts)
    grid = [BASELINE, PredictorSpec.of("parametric", C=0.3), PredictorSpec.of("hybrid", gamma=0.5)]
    make = lambda spec: make_predictor(spec.kind, **spec.kwargs)  # noqa: E731
    blended = select_predictor(X, data.quality, data.cost, data.models, make, grid=grid)
    alone = select_predictor(X, data.quality, data.cost, data.models, make, grid=[BASELINE, grid[2]])
    by_label = lambda s: {r["spec"].label: r["audc"] for r in s.rows}  # noqa: E731
    assert by_label(blended)["hybrid(gamma=0.5)"] == pytest.approx(by_label(alone)["hybrid(gamma=0.5)"], abs=1e-12)
    assert HybridQuality().k == KNNQuality().k == 200  # the halves the blend assumes are the grid's


def test_a_dataset_too_small_to_fold_gets_the_baseline(train_sample, caplog):
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        router = fit_router(train_sample(3, 0), AUTO, warm_start=False)
    assert isinstance(router.quality, KNNQuality) and router.quality.k == 200
    assert "too few to choose a predictor" in caplog.text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"folds": 1}, "folds must be an int >= 2"),
    ({"folds": True}, "folds must be an int >= 2"),
    ({"grid": [PredictorSpec.of("knn", k=5)]}, "baseline knn.k=200. is not in the grid"),
])
def test_select_predictor_validates_its_input(train_sample, kwargs, message):
    data = train_sample(40, 0)
    X = np.random.default_rng(0).normal(size=(len(data), 8))
    with pytest.raises(ValueError, match=message):
        select_predictor(X, data.quality, data.cost, data.models, lambda s: make_predictor(s.kind, **s.kwargs),
                         **kwargs)
    with pytest.raises(ValueError, match="disagree"):
        select_predictor(X[:-1], data.quality, data.cost, data.models, lambda s: make_predictor(s.kind, **s.kwargs))


@pytest.mark.slow
def test_fit_prints_the_cross_validation_table(train_sample, tmp_path, capsys):
    data = train_sample(400, 1)
    path = tmp_path / "small.parquet"
    import pandas as pd

    frame = pd.DataFrame({"prompt": data.prompts, "split": "train", "sample_id": data.sample_ids})
    for j, m in enumerate(data.models):
        frame[m] = data.quality[:, j]
        frame[f"{m}|total_cost"] = data.cost[:, j]
    frame.to_parquet(path)
    assert main(["fit", str(path), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "auto: 5-fold cross-validated AUDC on the training data chose" in out
    assert "knn(k=200)" in out and "learned-map(n_clusters=16)" in out


def _noise_dataset(train_sample, n: int, copies: int, seed: int = 0):
    """n RouterBench prompts, each recorded `copies` times, with labels drawn at random per prompt:
    the text carries no signal, so no predictor should beat the baseline."""
    from dataclasses import replace as _replace

    base = train_sample(n, seed)
    rng = np.random.default_rng(seed)
    labels = (rng.random(base.quality.shape) < 0.5).astype(float)
    idx = np.repeat(np.arange(n), copies)
    return _replace(
        base,
        prompts=[base.prompts[i] for i in idx],
        quality=labels[idx],
        cost=base.cost[idx],
        task=base.task[idx],
        split=base.split[idx],
        sample_ids=np.asarray(
            [f"{base.sample_ids[i]}#{c}" for i, c in zip(idx, np.tile(np.arange(copies), n), strict=False)],
            dtype=object,
        ),
        responses=None,
        _cache={},
    )


def test_a_prompt_recorded_twice_never_leaks_across_folds(train_sample):
    data = _noise_dataset(train_sample, 120, 3)
    X = fit_router(data, "knn", warm_start=False).embedder.transform(data.prompts)
    make = lambda spec: make_predictor(spec.kind, **spec.kwargs)  # noqa: E731
    grid = [BASELINE, PredictorSpec.of("knn", k=5), PredictorSpec.of("cluster", n_clusters=8)]
    leaky = select_predictor(X, data.quality, data.cost, data.models, make, grid=grid)
    grouped = select_predictor(X, data.quality, data.cost, data.models, make, grid=grid, groups=data.prompts)
    # Per row, a k = 5 neighbourhood finds the prompt's own copies in the fitted folds: "signal".
    assert leaky.best != BASELINE
    assert grouped.best == BASELINE


def test_auto_falls_back_to_the_baseline_when_audc_is_undefined(train_sample, caplog):
    from dataclasses import replace as _replace

    data = train_sample(200, 4)
    best = int(np.nanargmax(np.nanmean(data.quality, axis=0)))
    cost = data.cost.copy()
    cost[:, best] = 0.0  # the most accurate model is self-hosted: the reference cost is 0
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        router = fit_router(_replace(data, cost=cost, _cache={}), AUTO, warm_start=False)
    assert isinstance(router.quality, KNNQuality) and router.quality.k == 200
    assert "cannot choose a predictor by cross-validation" in caplog.text


def test_out_of_fold_quality_validates_folds():
    from shared_core.selection import out_of_fold_quality

    X, Y = np.random.default_rng(0).normal(size=(20, 4)), np.ones((20, 2))
    for folds in (0, -1, 1, True):
        with pytest.raises(ValueError, match="folds must be an int >= 2"):
            out_of_fold_quality(KNNQuality(), X, Y, ["a", "b"], folds=folds)
