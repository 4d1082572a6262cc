"""Prices learned from recorded costs (issue 14, item 1): any model names, a per-request term where
the data shows one, the fit's quality reported, and `omniroute eval` on a dataset without a table."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from shared_core import Candidate, Router
from shared_core.data import load_dataset
from shared_core.fitting import POOR_FIT_R2, fit_prices, priced_candidates
from shared_core.pricing import Usage, price

FEE = 0.002  # USD per request


def test_a_request_price_is_charged_per_call_and_reserved():
    c = Candidate(name="m", input_price=1.0, output_price=2.0, request_price=FEE, prior_quality=0.5,
                  max_output_tokens=100)
    assert price(c, Usage(input_tokens=1_000, output_tokens=500)) == pytest.approx(0.001 + 0.001 + FEE)
    assert c.cost(0, 0) == FEE and c.worst_case_cost(1_000, 100) == pytest.approx(0.001 + 0.0002 + FEE)
    router = Router([c])
    decision = router.decide("Hello.", max_tokens=10)
    assert decision.cost["m"] >= FEE
    assert router.estimate(["Hello."]).cost[0, 0] >= FEE
    with pytest.raises(ValueError, match="request_price must be a finite number >= 0 .USD per request"):
        Candidate(name="m", input_price=1.0, output_price=1.0, request_price=-1)


def test_fit_prices_finds_a_per_request_fee_only_where_the_costs_hold_one(train):
    data = replace(train, prices=None)
    j = data.models.index("gpt-3.5-turbo-1106")
    cost = data.cost.copy()
    cost[:, j] = np.where(np.isfinite(cost[:, j]), cost[:, j] + FEE, np.nan)
    fit = fit_prices(replace(data, cost=cost))
    assert fit.request_prices["gpt-3.5-turbo-1106"] == pytest.approx(FEE, rel=0.05)
    true_in, true_out = train.prices["gpt-3.5-turbo-1106"]
    assert fit.prices["gpt-3.5-turbo-1106"] == pytest.approx((true_in, true_out), rel=0.05)
    # RouterBench's recorded costs of the other token-priced models are tokens × price: no fee.
    for m in ("gpt-4-1106-preview", "claude-v2", "mistralai/mixtral-8x7b-chat"):
        assert fit.request_prices[m] < 1e-6, m
        assert fit.r2[m] > 0.99
    candidates = {c.name: c for c in fit.candidates()}
    assert candidates["gpt-3.5-turbo-1106"].request_price == fit.request_prices["gpt-3.5-turbo-1106"]


def test_a_fit_that_does_not_explain_the_costs_is_a_warning(train, caplog):
    data = replace(train, prices=None)
    j = data.models.index("claude-v2")
    cost = data.cost.copy()
    cost[:, j] = np.random.default_rng(0).permutation(cost[:, j])  # costs unrelated to the tokens
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        fit = fit_prices(replace(data, cost=cost))
    assert fit.r2["claude-v2"] < POOR_FIT_R2
    assert "learned prices for 'claude-v2' explain only" in caplog.text
    assert "'gpt-4-1106-preview'" not in caplog.text


def test_priced_candidates_prefer_the_table(train):
    candidates, fit = priced_candidates(train)
    assert fit is None and {c.name: (c.input_price, c.output_price) for c in candidates} == train.prices
    candidates, fit = priced_candidates(replace(train, prices=None), max_output_tokens=256)
    assert fit is not None and all(c.max_output_tokens == 256 for c in candidates)
    with pytest.raises(ValueError, match="neither a price table nor per-query costs"):
        priced_candidates(replace(train, prices=None, cost=None))


@pytest.mark.slow
def test_eval_runs_on_a_dataset_whose_models_have_unknown_names(routerbench_path, tmp_path):
    frame = pd.read_parquet(routerbench_path)
    models = [c[: -len("|total_cost")] for c in frame.columns if c.endswith("|total_cost")]
    renamed = {m: f"vendor-{i}" for i, m in enumerate(models)}
    frame = frame.rename(columns={c: renamed.get(c.split("|")[0], c.split("|")[0]) + c[len(c.split("|")[0]):]
                                  for c in frame.columns})
    path = tmp_path / "unseen.parquet"
    frame.to_parquet(path)
    assert load_dataset(path).prices is None  # no built-in table knows these names
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "shared_core.cli", "eval", str(path), "--predictor", "prior", "--no-progress",
         "--budgets", "0.25", "--json", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "prices learned from the recorded costs of" in done.stdout
    assert "vendor-0" in done.stdout
    assert report.exists()


def test_constant_costs_fitted_exactly_are_not_a_poor_fit(train, caplog):
    data = replace(train.subset(np.arange(40)), prices=None)
    cost = np.full(data.cost.shape, 0.003)
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        fit = fit_prices(replace(data, cost=cost))
    assert all(r == 1.0 for r in fit.r2.values()) and "explain only" not in caplog.text
    assert fit.median_relative_error == pytest.approx(dict.fromkeys(data.models, 0.0), abs=1e-9)


def test_negative_recorded_costs_are_left_out_with_a_warning(train, caplog):
    data = replace(train, prices=None)
    j = data.models.index("claude-v2")
    cost = data.cost.copy()
    cost[:3, j] = -5.0
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        fit = fit_prices(replace(data, cost=cost))
    assert "3 negative recorded cost(s)" in caplog.text
    assert fit.prices["claude-v2"] == pytest.approx(train.prices["claude-v2"], rel=0.01)


@pytest.mark.parametrize("bad", [True, float("nan"), -0.5])
def test_a_request_price_must_be_a_number_of_usd(bad):
    with pytest.raises(ValueError, match="request_price must be"):
        Candidate(name="m", input_price=1.0, output_price=1.0, request_price=bad)
