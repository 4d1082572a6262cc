"""The interface every quality predictor follows (scikit-learn habits: fit, predict, state_)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["QualityPredictor", "check_targets"]


@runtime_checkable
class QualityPredictor(Protocol):
    """fit(X, Y, models) learns from embeddings X (n, d) and qualities Y (n, m, NaN = missing)."""

    models_: list[str]

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> "QualityPredictor": ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality, shape (len(X), len(models_))."""
        ...


def check_targets(X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated (X, Y, models): 2-D, aligned, one name per column, values in [0, 1] or NaN."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise ValueError(f"X has {len(X)} rows but Y has {len(Y)}")
    models = [str(m) for m in models]
    if len(models) != Y.shape[1]:
        raise ValueError(f"{len(models)} model names for {Y.shape[1]} quality columns")
    if len(set(models)) != len(models):
        raise ValueError("model names must be unique")
    finite = Y[~np.isnan(Y)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError("quality must lie in [0, 1] (NaN marks a missing label)")
    return X, Y, models
