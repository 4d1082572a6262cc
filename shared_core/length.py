"""Output-length predictors: how many tokens each model will answer with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LengthPrior"]


class LengthPrior:
    """Each model's mean output tokens over the training set; `default` for models without data."""

    needs_embedding = False

    def __init__(self, default: float = 256.0) -> None:
        self.default = default

    def fit(self, X: np.ndarray, L: np.ndarray, models: Sequence[str]) -> "LengthPrior":
        """Learn per-model mean output length from token counts L (n, m; NaN = unknown)."""
        L = np.asarray(L, dtype=np.float64)
        if L.ndim != 2 or L.shape[1] != len(models):
            raise ValueError(f"L must be (n, {len(models)}), got {L.shape}")
        self.models_ = [str(m) for m in models]
        counts = (~np.isnan(L)).sum(axis=0)
        self.mean_ = np.where(counts > 0, np.nansum(L, axis=0) / np.maximum(counts, 1), self.default)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted output tokens, shape (len(X), len(models_))."""
        return np.broadcast_to(self.mean_, (len(X), len(self.mean_))).copy()
