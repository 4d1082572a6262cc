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
