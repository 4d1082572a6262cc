"""`omniroute fit DATA --out DIR`: fits, saves a loadable router, shows progress, reports bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared_core.cli import main
from shared_core.router import Router


@pytest.fixture(scope="session")
def sample(routerbench_path, tmp_path_factory):
    """300 RouterBench rows (both splits) as a Parquet file of the user's own."""
    frame = pd.read_parquet(routerbench_path).sample(300, random_state=0)
    path = tmp_path_factory.mktemp("data") / "sample.parquet"
    frame.to_parquet(path)
    return path, frame


def test_fit_saves_a_router_that_loads_and_routes(sample, tmp_path, capsys):
    path, frame = sample
    assert main(["fit", str(path), "--out", str(tmp_path / "r"), "--predictor", "cluster"]) == 0
    captured = capsys.readouterr()
    n_train = int((frame["split"] == "train").sum())
    assert f"{n_train} prompts (split 'train')" in captured.out
    assert "fitting cluster" in captured.err and "3/3" in captured.err
    router = Router.load(tmp_path / "r")
    assert type(router.quality).__name__ == "ClusterQuality"
    assert router.decide(frame["prompt"].iloc[0]).chosen in {c.name for c in router.candidates}
    assert {c.max_output_tokens for c in router.candidates} == {1024}


def test_fit_learns_prices_when_the_dataset_has_none(sample, tmp_path, capsys):
    path, frame = sample
    models = [c[: -len("|total_cost")] for c in frame.columns if c.endswith("|total_cost")]

    def rename(column: str) -> str:
        base = column.split("|")[0]
        return f"in-house/{column}" if base in models else column

    renamed = tmp_path / "renamed.parquet"
    frame.rename(columns=rename).to_parquet(renamed)
    assert main(["fit", str(renamed), "--out", str(tmp_path / "r"), "--predictor", "knn", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "prices learned from the recorded costs" in out
    router = Router.load(tmp_path / "r")
    gpt4 = router.candidate("in-house/gpt-4-1106-preview")
    assert (gpt4.input_price, gpt4.output_price) == pytest.approx((10.0, 30.0))


@pytest.mark.slow
def test_fit_with_a_price_table_and_no_costs(llmrouter_paths, tmp_path):
    data, prices = llmrouter_paths
    frame = pd.read_parquet(data).sample(250, random_state=0)
    small = tmp_path / "llmrouter.parquet"
    frame.to_parquet(small)
    assert main(["fit", str(small), "--prices", str(prices), "--out", str(tmp_path / "r"), "--no-progress",
                 "--split", "train"]) == 0
    router = Router.load(tmp_path / "r")
    est = router.estimate(frame["prompt"].iloc[:5].tolist())
    # The dataset's costs assume 200 output tokens per call: the router learned that length.
    np.testing.assert_allclose(est.output_tokens, 200.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "missing.parquet", "--out", "x"], "dataset not found"),
        (["fit", "{data}", "--out", "{out}", "--split", "validation"], "no rows with split"),
    ],
)
def test_fit_reports_bad_input(sample, tmp_path, capsys, argv, message):
    path, _ = sample
    argv = [a.format(data=path, out=tmp_path / "r") for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_fit_rejects_unknown_predictors(sample, tmp_path, capsys):
    path, _ = sample
    with pytest.raises(SystemExit):
        main(["fit", str(path), "--out", str(tmp_path / "r"), "--predictor", "oracle"])
    assert "invalid choice: 'oracle'" in capsys.readouterr().err


def test_an_out_that_cannot_be_a_router_directory_is_refused_before_the_fit(sample, tmp_path, capsys, monkeypatch):
    path, _ = sample
    (tmp_path / "afile").write_text("not a directory")
    monkeypatch.setattr("shared_core.commands.fit.load_dataset", lambda *a, **k: pytest.fail("the fit started"))
    for out, message in [(tmp_path / "afile", "exists and is not a directory"),
                         (tmp_path / "afile" / "r", "afile is not a directory")]:
        assert main(["fit", str(path), "--out", str(out)]) == 2
        assert f"--out {out}" in (err := capsys.readouterr().err) and message in err, err


def test_a_dataset_without_any_quality_label_is_refused(sample, tmp_path, capsys):
    _, frame = sample
    unlabelled = frame.copy()
    models = [c for c in frame.columns if f"{c}|total_cost" in frame.columns]
    unlabelled[models] = np.nan
    path = tmp_path / "unlabelled.parquet"
    unlabelled.to_parquet(path)
    assert main(["fit", str(path), "--out", str(tmp_path / "r"), "--predictor", "knn"]) == 2
    assert "without quality labels" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_out_whose_parents_are_missing_is_made(sample, tmp_path, capsys):
    path, _ = sample
    out = tmp_path / "runs" / "new" / "r"
    assert main(["fit", str(path), "--out", str(out), "--predictor", "knn", "--no-progress"]) == 0
    assert Router.load(out).candidates


@pytest.mark.parametrize("spelled", [[], ["--split", "train"], ["--split-column", "split"]])
def test_a_dataset_without_a_split_column_is_fitted_on_every_row_and_says_so(sample, tmp_path, capsys, spelled):
    # The defaults spelled out are the defaults: every row counts as "train" there.
    _, frame = sample
    path = tmp_path / "nosplit.parquet"
    frame.drop(columns=["split"]).to_parquet(path)
    argv = ["fit", str(path), "--out", str(tmp_path / "r"), "--predictor", "knn", "--no-progress", *spelled]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nosplit.parquet: 300 prompts (every row: no 'split' column)" in out and "split 'train'" not in out


@pytest.mark.parametrize("args, column", [(["--split", "test"], "split"), (["--split", ""], "split"),
                                          (["--split-column", "fold"], "fold")])
def test_a_split_asked_of_a_dataset_without_the_column_is_refused_with_what_to_do(sample, tmp_path, capsys,
                                                                                 monkeypatch, args, column):
    _, frame = sample
    path = tmp_path / "nosplit.parquet"
    frame.drop(columns=["split"]).to_parquet(path)
    monkeypatch.setattr("shared_core.commands.fit.fit_router", lambda *a, **k: pytest.fail("the fit started"))
    assert main(["fit", str(path), "--out", str(tmp_path / "r"), *args]) == 2
    advice = "name the column holding the split with --split-column, or leave out --split and --split-column"
    assert f"has no split column {column!r}: {advice} to fit on every row" in (err := capsys.readouterr().err), err


def test_a_bad_candidate_setting_is_one_line_naming_the_option(sample, tmp_path, capsys):
    path, _ = sample
    assert main(["fit", str(path), "--out", str(tmp_path / "r"), "--max-output-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "omniroute fit: error: --max-output-tokens: must be > 0, got 0\n"
