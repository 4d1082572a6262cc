"""Fitting a Router from a routing dataset, with quality predictors chosen by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .candidates import Candidate
from .data import RoutingDataset
from .length import LengthPrior
from .quality import PriorQuality
from .router import Router

__all__ = ["PREDICTORS", "DEFAULT_PREDICTOR", "make_predictor", "fit_router"]

#: Quality predictors by name: each entry builds an unfitted predictor.
PREDICTORS: dict[str, Callable[[], Any]] = {
    "prior": PriorQuality,
}

#: The predictor `fit_router` and the CLI use when none is named.
DEFAULT_PREDICTOR = "prior"


def make_predictor(name: str) -> Any:
    """An unfitted quality predictor by registry name (ValueError listing the names otherwise)."""
    try:
        return PREDICTORS[name]()
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}") from None


def fit_router(
    dataset: RoutingDataset,
    predictor: str = DEFAULT_PREDICTOR,
    *,
    candidates: Sequence[Candidate] | None = None,
    progress: Callable[[str], None] | None = None,
    **router_kwargs: Any,
) -> Router:
    """A Router whose quality and length predictors are fitted on `dataset` (use its train split)."""
    if len(dataset) == 0:
        raise ValueError("cannot fit on an empty dataset")
    cands = list(candidates) if candidates is not None else dataset.candidates()
    quality = make_predictor(predictor)
    X = np.empty((len(dataset), 0))
    if progress:
        progress(f"fitting {predictor} on {len(dataset)} prompts × {len(dataset.models)} models")
    quality.fit(X, dataset.quality, dataset.models)
    lengths = LengthPrior()
    out = dataset.output_tokens()
    if out is not None:
        lengths.fit(X, out.astype(np.float64), dataset.models)
    return Router(cands, quality=quality, lengths=lengths, **router_kwargs)
