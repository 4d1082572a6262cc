"""Fitting a Router from a routing dataset: embedder, quality predictor by name, output lengths, prices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .candidates import Candidate
from .data import DEFAULT_ASSUMED_OUTPUT_TOKENS, RoutingDataset
from .embed import TfidfSvdEmbedder
from .length import HybridLength, LengthPrior
from .pricing import price_tokens
from .progress import progress
from .quality import (
    ClusterQuality, HybridQuality, KNNQuality, LearnedMapQuality, LogisticQuality, PriorQuality,
)
from .router import Router

__all__ = [
    "PREDICTORS", "DEFAULT_PREDICTOR", "make_predictor", "fit_router", "CostFit", "fit_prices", "output_lengths",
]

#: Quality predictors by name: each entry builds an unfitted predictor.
PREDICTORS: dict[str, Callable[[], Any]] = {
    "prior": PriorQuality,
    "knn": KNNQuality,
    "parametric": LogisticQuality,
    "hybrid": HybridQuality,
    "cluster": ClusterQuality,
    "learned-map": LearnedMapQuality,
}

#: The predictor `fit_router` and the CLI use when none is named (see benchmarks/predictors.py).
DEFAULT_PREDICTOR = "knn"


def make_predictor(name: str) -> Any:
    """An unfitted quality predictor by registry name (ValueError listing the names otherwise)."""
    try:
        return PREDICTORS[name]()
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}") from None


@dataclass(frozen=True)
class CostFit:
    """Prices learned from recorded per-query costs, and how well they reproduce them."""

    prices: dict[str, tuple[float, float]]
    r2: dict[str, float]
    median_relative_error: dict[str, float]
    assumed_output_tokens: float | None

    def candidates(self, **overrides: Any) -> list[Candidate]:
        """A Candidate per model, priced with the learned prices."""
        return [Candidate(name=m, input_price=p[0], output_price=p[1], **overrides) for m, p in self.prices.items()]


def fit_prices(dataset: RoutingDataset, assumed_output_tokens: float = DEFAULT_ASSUMED_OUTPUT_TOKENS) -> CostFit:
    """Each model's (input, output) USD per 1M tokens, by non-negative least squares on its costs.

    cost ≈ p_in·prompt tokens + p_out·response tokens. Without responses the output term is a
    per-call constant, expressed as `assumed_output_tokens` at price p_out, so that the router,
    predicting that many output tokens, reproduces it.
    """
    from scipy.optimize import nnls

    if dataset.cost is None:
        raise ValueError("this dataset records no per-query costs to learn prices from")
    inp = dataset.prompt_tokens().astype(np.float64)
    out = dataset.output_tokens()
    prices, r2, rel = {}, {}, {}
    for j, model in enumerate(dataset.models):
        second = np.full(len(inp), float(assumed_output_tokens)) if out is None else out[:, j].astype(np.float64)
        A = np.column_stack([inp, second])
        c = dataset.cost[:, j]
        ok = np.isfinite(c)
        if ok.sum() < 2:
            raise ValueError(f"model {model!r} has fewer than 2 recorded costs to learn its prices from")
        coef, _ = nnls(A[ok], c[ok])
        prices[model] = (float(coef[0] * 1e6), float(coef[1] * 1e6))
        pred = price_tokens(inp[ok], second[ok], *prices[model])
        total = float(((c[ok] - c[ok].mean()) ** 2).sum())
        r2[model] = 1.0 - float(((c[ok] - pred) ** 2).sum()) / total if total > 0 else 1.0
        pos = c[ok] > 0
        rel[model] = float(np.median(np.abs(pred[pos] - c[ok][pos]) / c[ok][pos])) if pos.any() else 0.0
    return CostFit(prices, r2, rel, None if out is not None else float(assumed_output_tokens))


def output_lengths(dataset: RoutingDataset, prices: dict[str, tuple[float, float]] | None) -> np.ndarray | None:
    """Output tokens per (prompt, model): counted from responses, else implied by costs and prices.

    Implied: (cost − prompt tokens × input price) / output price, so a dataset that records only
    costs still teaches the length predictor how each prompt's output cost varies.
    """
    out = dataset.output_tokens()
    if out is not None:
        return out.astype(np.float64)
    if dataset.cost is None or not prices or any(m not in prices for m in dataset.models):
        return None
    p_in = np.array([prices[m][0] for m in dataset.models]) / 1e6
    p_out = np.array([prices[m][1] for m in dataset.models]) / 1e6
    inp = dataset.prompt_tokens()[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = (dataset.cost - inp * p_in) / p_out
    return np.where(np.isfinite(implied), np.maximum(implied, 0.0), np.nan)


def fit_router(
    dataset: RoutingDataset,
    predictor: str = DEFAULT_PREDICTOR,
    *,
    candidates: Sequence[Candidate] | None = None,
    embedder: Any = None,
    warm_start: bool = True,
    show_progress: bool = False,
    **router_kwargs: Any,
) -> Router:
    """A Router whose embedder, quality and length predictors are fitted on `dataset` (its train split).

    `embedder=None` fits the default offline TfidfSvdEmbedder on the prompts; a given embedder
    is used as it is (pretrained, or fitted before). Candidates default to the dataset's price
    table, else to prices learned from its recorded costs (`fit_prices`). With `warm_start`,
    live budgets are priced from the batch solution on the dataset's prompts (`Router.warm_start`).
    """
    if len(dataset) == 0:
        raise ValueError("cannot fit on an empty dataset")
    quality = make_predictor(predictor)
    if candidates is None:
        candidates = dataset.candidates() if dataset.prices else fit_prices(dataset).candidates()
    cands = list(candidates)
    lengths_y = output_lengths(dataset, {c.name: (c.input_price, c.output_price) for c in cands})
    needs_embedding = quality.needs_embedding
    lengths = HybridLength() if needs_embedding and lengths_y is not None else LengthPrior()
    if lengths_y is None:  # no length data: every model gets the prior's default
        lengths_y = np.full(dataset.quality.shape, np.nan)
    fit_embedder = needs_embedding and embedder is None
    if fit_embedder:
        embedder = TfidfSvdEmbedder()
    X = np.empty((len(dataset), 0))

    def embed() -> None:
        nonlocal X
        if fit_embedder:
            embedder.fit(dataset.prompts)
        X = embedder.transform(dataset.prompts)

    def fit_quality() -> None:
        quality.fit(X, dataset.quality, dataset.models)

    def fit_lengths() -> None:
        lengths.fit(X, lengths_y, dataset.models)

    steps = ([embed] if needs_embedding else []) + [fit_quality, fit_lengths]
    label = f"fitting {predictor} on {len(dataset)} prompts × {len(dataset.models)} models"
    for step in progress(steps, label=label, enabled=show_progress):
        step()
    router = Router(cands, quality=quality, lengths=lengths, embedder=embedder if needs_embedding else None,
                    **router_kwargs)
    if warm_start:
        router.warm_start(dataset.prompts)
    return router
