"""Fitting a Router from a routing dataset: embedder, quality predictor by name, output lengths, prices."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .candidates import Candidate
from .data import DEFAULT_ASSUMED_OUTPUT_TOKENS, RoutingDataset
from .embed import TfidfSvdEmbedder
from .length import HybridLength, LengthPrior
from .pricing import price_tokens
from .progress import progress
from .quality import PREDICTORS
from .quality.base import needs_embedding
from .router import Router
from .selection import BASELINE, DEFAULT_FOLDS, PredictorSpec, Selection, out_of_fold_quality, select_predictor

logger = logging.getLogger("omniroute")

__all__ = [
    "PREDICTORS", "DEFAULT_PREDICTOR", "make_predictor", "fit_router", "CostFit", "fit_prices", "output_lengths",
    "priced_candidates", "POOR_FIT_R2", "AUTO", "PREDICTOR_NAMES",
]

#: The name under which `fit_router` chooses the predictor by cross-validation (`shared_core.selection`).
AUTO = "auto"
#: What `fit_router` and the commands accept as a predictor's name.
PREDICTOR_NAMES = (AUTO, *PREDICTORS)
#: The predictor `fit_router` and the CLI use when none is named.
DEFAULT_PREDICTOR = AUTO


def make_predictor(name: str, **params: Any) -> Any:
    """An unfitted quality predictor by registry name and hyper-parameters (ValueError for an
    unknown name, TypeError for an unknown parameter)."""
    try:
        cls = PREDICTORS[name]
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}") from None
    return cls(**params)


def _choose(X: np.ndarray, dataset: RoutingDataset, show_progress: bool) -> tuple[PredictorSpec, Selection | None]:
    """The spec cross-validation on `dataset` chooses; the baseline when it is too small to fold."""
    folds = min(DEFAULT_FOLDS, len(dataset) // 2)
    if dataset.cost is None:
        logger.warning("the dataset records no costs to measure AUDC with; using %s", BASELINE.label)
        return BASELINE, None
    if folds < 2:
        logger.warning("%d prompts are too few to choose a predictor by cross-validation; using %s",
                       len(dataset), BASELINE.label)
        return BASELINE, None
    try:
        selection = select_predictor(X, dataset.quality, dataset.cost, dataset.models,
                                     lambda spec: make_predictor(spec.kind, **spec.kwargs), folds=folds,
                                     groups=dataset.prompts, show_progress=show_progress)
    except ValueError as error:  # e.g. the most accurate model records no cost: AUDC is undefined
        logger.warning("cannot choose a predictor by cross-validation (%s); using %s", error, BASELINE.label)
        return BASELINE, None
    logger.info("auto: %d-fold cross-validation chose %s\n%s", selection.folds, selection.best.label, selection.table())
    return selection.best, selection


@dataclass(frozen=True)
class CostFit:
    """Prices learned from recorded per-query costs, and how well they reproduce them.

    `prices` maps each model to (input, output) USD per 1M tokens; `request_prices` to USD per
    request (0.0 where the data shows no per-call part); `r2` and `median_relative_error` say how
    well the fit reproduces the recorded costs (R² below POOR_FIT_R2 is logged as a warning).
    """

    prices: dict[str, tuple[float, float]]
    r2: dict[str, float]
    median_relative_error: dict[str, float]
    assumed_output_tokens: float | None
    request_prices: dict[str, float] = field(default_factory=dict)

    def candidates(self, **overrides: Any) -> list[Candidate]:
        """A Candidate per model, priced with the learned prices."""
        return [
            Candidate(name=m, input_price=p[0], output_price=p[1], request_price=self.request_prices.get(m, 0.0),
                      **overrides)
            for m, p in self.prices.items()
        ]


#: A learned cost model explaining less than this share of the recorded costs' variance is
#: reported as a warning: the costs do not follow the tokens (or the counts are not the billed ones).
POOR_FIT_R2 = 0.5
#: Folds of the cross-validation that decides whether a model's costs hold a per-request part.
PRICE_FOLDS = 5


def _nnls_fit(A: np.ndarray, c: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    # Columns scaled to unit norm: token counts (~10³) and a column of ones differ by orders of
    # magnitude, and NNLS on unscaled columns converges badly.
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(A / scale, c)
    return coef / scale


def _cv_error(A: np.ndarray, c: np.ndarray, folds: int) -> float:
    """Mean squared error of NNLS on `A` → `c`, over `folds` contiguous held-out folds."""
    parts = np.array_split(np.arange(len(c)), folds)
    errors = []
    for held in parts:
        train = np.setdiff1d(np.arange(len(c)), held)
        coef = _nnls_fit(A[train], c[train])
        errors.append(np.mean((A[held] @ coef - c[held]) ** 2))
    return float(np.mean(errors))


def fit_prices(dataset: RoutingDataset, assumed_output_tokens: float = DEFAULT_ASSUMED_OUTPUT_TOKENS) -> CostFit:
    """Each model's (input, output) USD per 1M tokens, and a per-request USD where the data shows
    one, by non-negative least squares on its recorded costs.

    cost ≈ p_req + p_in·prompt tokens + p_out·response tokens. The per-request term is kept for a
    model only when it lowers the PRICE_FOLDS-fold cross-validated squared error of its costs (a
    fee per call, or billing that rounds short outputs up); otherwise p_req = 0. Without responses
    the output term is itself a per-call constant, expressed as `assumed_output_tokens` at price
    p_out, so that the router, predicting that many output tokens, reproduces it (no p_req then).
    Raises ValueError when the dataset has no costs or a model has fewer than 2; logs a WARNING for
    a model whose fit explains less than POOR_FIT_R2 of its costs' variance.
    """
    if dataset.cost is None:
        raise ValueError("this dataset records no per-query costs to learn prices from")
    inp = dataset.prompt_tokens().astype(np.float64)
    out = dataset.output_tokens()
    prices, requests, r2, rel = {}, {}, {}, {}
    for j, model in enumerate(dataset.models):
        second = np.full(len(inp), float(assumed_output_tokens)) if out is None else out[:, j].astype(np.float64)
        c = dataset.cost[:, j]
        negative = int(np.sum(c < 0))
        if negative:
            logger.warning("model %r has %d negative recorded cost(s): left out of its price fit", model, negative)
        ok = np.isfinite(c) & (c >= 0) & np.isfinite(second)
        if ok.sum() < 2:
            raise ValueError(f"model {model!r} has fewer than 2 recorded costs to learn its prices from")
        A = np.column_stack([inp[ok], second[ok]])
        coef = np.append(_nnls_fit(A, c[ok]), 0.0)
        if out is not None and ok.sum() >= 2 * PRICE_FOLDS:
            with_fee = np.column_stack([A, np.ones(len(A))])
            if _cv_error(with_fee, c[ok], PRICE_FOLDS) < _cv_error(A, c[ok], PRICE_FOLDS):
                coef = _nnls_fit(with_fee, c[ok])
        prices[model] = (float(coef[0] * 1e6), float(coef[1] * 1e6))
        requests[model] = float(coef[2])
        pred = price_tokens(inp[ok], second[ok], *prices[model]) + requests[model]
        total = float(((c[ok] - c[ok].mean()) ** 2).sum())
        pos = c[ok] > 0
        rel[model] = float(np.median(np.abs(pred[pos] - c[ok][pos]) / c[ok][pos])) if pos.any() else 0.0
        if total > 1e-12 * float((c[ok] ** 2).sum()):
            r2[model] = 1.0 - float(((c[ok] - pred) ** 2).sum()) / total
        else:  # (nearly) constant costs: R² is noise over noise; judge by the relative error
            r2[model] = 1.0 if rel[model] <= 0.01 else 0.0
        if r2[model] < POOR_FIT_R2:
            logger.warning(
                "learned prices for %r explain only R² = %.2f of its recorded costs (median error %.0f%%): its "
                "costs do not follow its token counts; give a price table (--prices) if you have one",
                model, r2[model], 100 * rel[model],
            )
    return CostFit(prices, r2, rel, None if out is not None else float(assumed_output_tokens), requests)


def priced_candidates(train: RoutingDataset, **overrides: Any) -> tuple[list[Candidate], CostFit | None]:
    """Candidates priced by the dataset's price table, or else by prices learned from its recorded
    costs (`fit_prices`, returned too so that callers can report the fit). ValueError when it has
    neither."""
    if train.prices:
        return train.candidates(**overrides), None
    if train.cost is None:
        raise ValueError("this dataset has neither a price table nor per-query costs: pass a price table "
                         "(`--prices FILE` on the command line, `load_dataset(path, prices=...)` in code)")
    cost_fit = fit_prices(train)
    return cost_fit.candidates(**overrides), cost_fit


def output_lengths(
    dataset: RoutingDataset, prices: dict[str, tuple[float, float]] | None,
    request_prices: dict[str, float] | None = None,
) -> np.ndarray | None:
    """Output tokens per (prompt, model): counted from responses, else implied by costs and prices.

    Implied: (cost − per-request price − prompt tokens × input price) / output price, so a dataset
    that records only costs still teaches the length predictor how each prompt's output cost varies.
    """
    out = dataset.output_tokens()
    if out is not None:
        return out.astype(np.float64)
    if dataset.cost is None or not prices or any(m not in prices for m in dataset.models):
        return None
    p_in = np.array([prices[m][0] for m in dataset.models]) / 1e6
    p_out = np.array([prices[m][1] for m in dataset.models]) / 1e6
    p_req = np.array([(request_prices or {}).get(m, 0.0) for m in dataset.models])
    inp = dataset.prompt_tokens()[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = (dataset.cost - p_req - inp * p_in) / p_out
    return np.where(np.isfinite(implied), np.maximum(implied, 0.0), np.nan)


def fit_router(
    dataset: RoutingDataset,
    predictor: str | PredictorSpec = DEFAULT_PREDICTOR,
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
    live budgets are priced from the batch solution on the dataset's prompts (`Router.warm_start`),
    their quality predicted out of fold, as live prompts will be (`selection.out_of_fold_quality`).

    `predictor` is a name in PREDICTORS, a PredictorSpec (a name with hyper-parameters), or
    "auto" (the default): the spec `selection.select_predictor` chooses by 5-fold cross-validated
    AUDC on `dataset`; its outcome is the fitted predictor's `selection_` attribute.
    """
    if len(dataset) == 0:
        raise ValueError("cannot fit on an empty dataset")
    if np.isnan(dataset.quality).all():
        # Every prediction would be the same uninformed 0.5: a fit that routes everything to the cheapest.
        raise ValueError(f"cannot fit on a dataset without quality labels: all {dataset.quality.size:,} are missing")
    auto = predictor == AUTO
    spec = predictor if isinstance(predictor, PredictorSpec) else BASELINE if auto else None
    # spec is None only for a predictor named by a string (not a PredictorSpec, not "auto").
    quality = make_predictor(spec.kind, **spec.kwargs) if spec is not None else make_predictor(cast(str, predictor))
    if candidates is None:
        candidates, _ = priced_candidates(dataset)
    cands = list(candidates)
    lengths_y = output_lengths(dataset, {c.name: (c.input_price, c.output_price) for c in cands},
                               {c.name: c.request_price for c in cands})
    embeds = needs_embedding(quality)
    lengths = HybridLength() if embeds and lengths_y is not None else LengthPrior()
    if lengths_y is None:  # no length data: every model gets the prior's default
        lengths_y = np.full(dataset.quality.shape, np.nan)
    fit_embedder = embeds and embedder is None
    if fit_embedder:
        embedder = TfidfSvdEmbedder()
    X = np.empty((len(dataset), 0))

    def embed() -> None:
        nonlocal X
        if fit_embedder:
            embedder.fit(dataset.prompts)
        X = embedder.transform(dataset.prompts)

    def fit_quality() -> None:
        nonlocal quality
        selection = None
        if auto:
            chosen, selection = _choose(X, dataset, show_progress)
            quality = make_predictor(chosen.kind, **chosen.kwargs)
        quality.fit(X, dataset.quality, dataset.models)
        if selection is not None:
            quality.selection_ = selection

    def fit_lengths() -> None:
        lengths.fit(X, lengths_y, dataset.models)

    steps = ([embed] if embeds else []) + [fit_quality, fit_lengths]
    name = predictor.label if isinstance(predictor, PredictorSpec) else predictor
    label = f"fitting {name} on {len(dataset)} prompts × {len(dataset.models)} models"
    for step in progress(steps, label=label, enabled=show_progress):
        step()
    router = Router(cands, quality=quality, lengths=lengths, embedder=embedder if embeds else None,
                    **router_kwargs)
    if warm_start:
        router.warm_start(dataset.prompts, quality=_unseen_quality(router, quality, X, dataset))
    return router


def _unseen_quality(router: Router, quality: Any, X: np.ndarray, dataset: RoutingDataset) -> np.ndarray | None:
    """The router's quality estimates of the training prompts as if they were new (out of fold),
    in routing-column order; None when there are too few prompts to fold (or no embedding)."""
    if X.shape[1] == 0 or len(dataset) < 2 * DEFAULT_FOLDS:
        return None
    unseen = out_of_fold_quality(quality, X, dataset.quality, dataset.models, groups=dataset.prompts)
    names = [c.name for c in router.candidates]
    if all(name in dataset.models for name in names):  # the usual case: no second pass over the prompts
        return unseen[:, [dataset.models.index(name) for name in names]]
    # Candidates without a dataset column (priced priors) keep the router's own estimate.
    q = router.estimate(dataset.prompts).quality
    for j, name in enumerate(names):
        if name in dataset.models:
            q[:, j] = unseen[:, dataset.models.index(name)]
    return q
