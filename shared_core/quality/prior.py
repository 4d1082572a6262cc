"""ZeroRouter's predictor: each model's mean quality, whatever the prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Estimator, check_fitted, check_labels, check_number_param, check_profile, check_targets, model_index

__all__ = ["PriorQuality"]


class PriorQuality(Estimator):
    """Predicts every prompt's quality as the model's mean over the training set (NaN skipped).

    The baseline every router is compared with: routing on it sends every prompt to one model.

    Parameters:
        default: the quality of a model without any label, in [0, 1].

    fit(X (n, d) (ignored), Y (n, m) in [0, 1], NaN = unknown, models); predict(X (r, ·)) → (r, m).
    """

    needs_embedding = False

    def __init__(self, default: float = 0.5) -> None:
        self.default = default

    def _check_params(self) -> None:
        check_number_param("default", self.default, 0.0, 1.0)

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> PriorQuality:
        """Learn each model's mean quality; a model with no labels gets `default`."""
        self._check_params()
        _, Y, self.models_ = check_targets(X, Y, models)
        self.counts_ = (~np.isnan(Y)).sum(axis=0).astype(np.float64)
        self.sums_ = np.nansum(Y, axis=0)
        self._update_mean()
        return self

    def _update_mean(self) -> None:
        self.mean_ = np.where(self.counts_ > 0, self.sums_ / np.maximum(self.counts_, 1), self.default)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The means, repeated for each row of X."""
        check_fitted(self)
        return np.broadcast_to(self.mean_, (len(X), len(self.mean_))).copy()

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """A new model's mean over its profile labels."""
        check_fitted(self)
        y = np.asarray(y_profile, dtype=np.float64).reshape(-1)
        _, y = check_profile(np.empty((len(y), 0)), y, 0, name=name, known=self.models_)
        self.sums_ = np.append(self.sums_, np.nansum(y))
        self.counts_ = np.append(self.counts_, float((~np.isnan(y)).sum()))
        self.models_ = [*self.models_, name]
        self._update_mean()

    def remove_model(self, name: str) -> None:
        """Drop a model."""
        check_fitted(self)
        j = model_index(self.models_, name)
        self.sums_, self.counts_ = np.delete(self.sums_, j), np.delete(self.counts_, j)
        self.models_ = [m for m in self.models_ if m != name]
        self._update_mean()

    def observe(self, X: np.ndarray, model: str, y: np.ndarray) -> None:
        """Fold observed outcomes of `model` into its mean."""
        check_fitted(self)
        j = model_index(self.models_, model)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        _, y = check_labels(np.empty((len(y), 0)), y, 0, name=model)
        sums, counts = self.sums_.copy(), self.counts_.copy()
        sums[j] += np.nansum(y)
        counts[j] += (~np.isnan(y)).sum()
        self.sums_, self.counts_ = sums, counts
        self._update_mean()

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model names, plus label sums and counts."""
        return {"models": list(self.models_)}, {"sums": self.sums_, "counts": self.counts_}

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.models_ = [str(m) for m in state["models"]]
        self.sums_, self.counts_ = np.asarray(arrays["sums"], float), np.asarray(arrays["counts"], float)
        m = len(self.models_)
        if self.sums_.shape != (m,) or self.counts_.shape != (m,) or (self.counts_ < 0).any():
            raise ValueError(f"prior sums/counts {self.sums_.shape}/{self.counts_.shape} do not fit {m} models")
        if ((self.sums_ < 0) | (self.sums_ > self.counts_)).any():
            raise ValueError("prior label sums must lie between 0 and the label counts")
        self._update_mean()
