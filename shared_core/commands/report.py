"""What the commands print about a fit: the prices it used and the predictor it chose."""

from __future__ import annotations

from typing import Any

from ..candidates import Candidate
from ..data import RoutingDataset
from ..fitting import priced_candidates
from ..router import Router


def candidates_for(train: RoutingDataset, **overrides: Any) -> list[Candidate]:
    """The training split's candidates (see `priced_candidates`); learned prices are printed with
    how well they reproduce the recorded costs."""
    candidates, cost_fit = priced_candidates(train, **overrides)
    if cost_fit is None:
        return candidates
    note = "" if cost_fit.assumed_output_tokens is None else (
        f" (no responses: output price per {cost_fit.assumed_output_tokens:g} assumed output tokens)")
    print(f"no price table: prices learned from the recorded costs of {len(train):,} prompts{note}")
    print(f"  {'model':<36} {'in $/M':>9} {'out $/M':>9} {'$/request':>10} {'R²':>7} {'median err':>11}")
    for m, (p_in, p_out) in cost_fit.prices.items():
        print(f"  {m:<36} {p_in:>9.4g} {p_out:>9.4g} {cost_fit.request_prices[m]:>10.3g} {cost_fit.r2[m]:>7.3f} "
              f"{cost_fit.median_relative_error[m]:>11.2%}")
    return candidates


def print_selection(router: Router) -> None:
    """The cross-validation table of an `auto` fit (nothing for a predictor named outright)."""
    selection = getattr(router.quality, "selection_", None)
    if selection is not None:
        print(f"auto: {selection.folds}-fold cross-validated AUDC on the training data chose {selection.best.label} "
              f"(another spec must beat {selection.baseline.label} by 2 paired standard errors)")
        print("  " + selection.table().replace("\n", "\n  "))
