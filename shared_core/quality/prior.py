"""ZeroRouter's predictor: each model's mean quality, whatever the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import check_targets

__all__ = ["PriorQuality"]


class PriorQuality:
    """Predicts every prompt's quality as the model's mean over the training set (NaN skipped)."""

    needs_embedding = False

    def __init__(self, default: float = 0.5) -> None:
        self.default = default

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> "PriorQuality":
        """Learn each model's mean quality; a model with no labels gets `default`."""
        _, Y, self.models_ = check_targets(X, Y, models)
        counts = (~np.isnan(Y)).sum(axis=0)
        sums = np.nansum(Y, axis=0)
        self.mean_ = np.where(counts > 0, sums / np.maximum(counts, 1), self.default)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The means, repeated for each row of X."""
        return np.broadcast_to(self.mean_, (len(X), len(self.mean_))).copy()
