"""Output-length predictors: how many tokens each model will answer with.

`LengthPrior` is each model's mean; `HybridLength` is OmniRouter's blend of a parametric
(ridge regression on the prompt embedding) and a retrieval (k nearest prompts) estimate, with
weight δ. The router turns predicted tokens into the pre-call cost estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .quality.base import (
    Estimator,
    check_fitted,
    check_int_param,
    check_number_param,
    check_profile,
    check_rows,
    model_index,
)
from .quality.memory import LabelMemory

__all__ = ["LengthPredictor", "LengthPrior", "HybridLength", "check_lengths"]


@runtime_checkable
class LengthPredictor(Protocol):
    """fit(X, L, models) learns from embeddings X (n, d) and output token counts L (n, m, NaN = missing)."""

    models_: list[str]

    def fit(self, X: np.ndarray, L: np.ndarray, models: Sequence[str]) -> LengthPredictor: ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted output tokens (>= 0), shape (len(X), len(models_))."""
        ...


def check_lengths(X: np.ndarray, L: np.ndarray, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validated (X, L, models): 2-D, aligned, one name per column, token counts >= 0 or NaN."""
    X = np.asarray(X, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    if X.ndim != 2 or L.ndim != 2 or len(X) != len(L):
        raise ValueError(f"X and L must be 2-D with the same rows, got shapes {X.shape} and {L.shape}")
    models = [str(m) for m in models]
    if len(models) != L.shape[1] or len(set(models)) != len(models):
        raise ValueError(f"need {L.shape[1]} unique model names, got {models}")
    finite = L[~np.isnan(L)]
    if finite.size and (finite.min() < 0 or not np.isfinite(finite).all()):
        raise ValueError("output token counts must be finite and >= 0 (NaN marks a missing count)")
    return X, L, models


def _column_means(L: np.ndarray, default: float) -> np.ndarray:
    counts = (~np.isnan(L)).sum(axis=0)
    return np.where(counts > 0, np.nansum(L, axis=0) / np.maximum(counts, 1), default)


class LengthPrior(Estimator):
    """Each model's mean output tokens over the training set; `default` for models without data."""

    needs_embedding = False

    def __init__(self, default: float = 256.0) -> None:
        self.default = default

    def _check_params(self) -> None:
        check_number_param("default", self.default)

    def fit(self, X: np.ndarray, L: np.ndarray, models: Sequence[str]) -> LengthPrior:
        """Learn per-model mean output length from token counts L (n, m; NaN = unknown)."""
        self._check_params()
        _, L, self.models_ = check_lengths(np.empty((len(np.asarray(L)), 0)), L, models)
        self.mean_ = _column_means(L, self.default)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted output tokens, shape (len(X), len(models_))."""
        return np.broadcast_to(self.mean_, (len(X), len(self.mean_))).copy()

    def add_model(self, name: str, X_profile: np.ndarray, L_profile: np.ndarray) -> None:
        """A new model's mean over its profile answers."""
        check_fitted(self)
        _, y = check_profile(np.empty((len(np.ravel(L_profile)), 0)), L_profile, 0, name=name,
                             known=self.models_, hi=None)
        self.mean_ = np.append(self.mean_, np.nanmean(y))
        self.models_ = [*self.models_, name]

    def remove_model(self, name: str) -> None:
        """Drop a model."""
        check_fitted(self)
        j = model_index(self.models_, name)
        self.mean_ = np.delete(self.mean_, j)
        self.models_ = [m for m in self.models_ if m != name]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model names, plus the means."""
        return {"models": list(self.models_)}, {"mean": self.mean_}

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.models_ = [str(m) for m in state["models"]]
        self.mean_ = np.asarray(arrays["mean"], float)
        if self.mean_.shape != (len(self.models_),) or (self.mean_ < 0).any():
            raise ValueError(f"{self.mean_.shape} mean lengths (must be >= 0) for {len(self.models_)} models")


class HybridLength(Estimator):
    """L = δ·ridge(x) + (1 − δ)·mean length of the k nearest training prompts, per model.

    OmniRouter's hybrid output-length predictor (Mei et al., 2025, arXiv:2502.20576), in tokens.

    Parameters:
        delta: weight δ ∈ [0, 1] of the ridge regression (0: retrieval only).
        k: neighbours averaged (fewer for a model with fewer labels), ≥ 1.
        alpha: ridge L2 strength, > 0.
        default: the length of a model without any data, in tokens.

    fit(X (n, d), L (n, m) token counts ≥ 0, NaN = unknown, models); predict(X (r, d)) → (r, m) ≥ 0.
    ValueError for bad parameters or shapes; NotFittedError before fit.
    """

    needs_embedding = True

    def __init__(self, delta: float = 0.0, k: int = 20, alpha: float = 1.0, default: float = 256.0) -> None:
        self.delta = delta
        self.k = k
        self.alpha = alpha
        self.default = default

    def _check_params(self) -> None:
        check_number_param("default", self.default)
        check_number_param("delta", self.delta, 0.0, 1.0)
        check_int_param("k", self.k)
        check_number_param("alpha", self.alpha, low_open=True)

    def fit(self, X: np.ndarray, L: np.ndarray, models: Sequence[str]) -> HybridLength:
        """Remember the training prompts' lengths and fit one ridge regression per model."""
        self._check_params()
        X, L, self.models_ = check_lengths(X, L, models)
        self.memory_ = LabelMemory(X, L)
        self.mean_ = _column_means(L, self.default)
        fits = [self._ridge(X, L[:, j]) for j in range(L.shape[1])]
        self.coef_ = np.array([w for w, _ in fits]).reshape(len(fits), X.shape[1])
        self.intercept_ = np.array([b for _, b in fits])
        return self

    def _ridge(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        ok = ~np.isnan(y)
        if not ok.any():
            return np.zeros(X.shape[1]), float(self.default)
        X, y = X[ok], y[ok]
        mx, my = X.mean(axis=0), y.mean()
        Xc = X - mx
        w = np.linalg.solve(Xc.T @ Xc + self.alpha * np.eye(X.shape[1]), Xc.T @ (y - my))
        return w, float(my - mx @ w)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted output tokens (>= 0), shape (len(X), len(models_))."""
        check_fitted(self)
        X = check_rows(X, self.coef_.shape[1])
        if self.delta == 0.0:  # retrieval only (the usual choice): 0·ridge adds nothing
            return np.maximum(0.0, self.memory_.neighbour_means(X, int(self.k), self.mean_, 0.0))
        ridge = X @ self.coef_.T + self.intercept_
        if self.delta == 1.0:
            return np.maximum(0.0, ridge)
        knn = self.memory_.neighbour_means(X, int(self.k), self.mean_, 0.0)
        return np.maximum(0.0, self.delta * ridge + (1.0 - self.delta) * knn)

    def add_model(self, name: str, X_profile: np.ndarray, L_profile: np.ndarray) -> None:
        """A new model from its profile prompts' output token counts."""
        check_fitted(self)
        X, y = check_profile(X_profile, L_profile, self.coef_.shape[1], name=name, known=self.models_, hi=None)
        w, b = self._ridge(X, y)
        self.memory_.add_column(X, y)
        self.coef_, self.intercept_ = np.vstack([self.coef_, w]), np.append(self.intercept_, b)
        self.mean_ = np.append(self.mean_, np.nanmean(y))
        self.models_ = [*self.models_, name]

    def remove_model(self, name: str) -> None:
        """Drop a model from both halves."""
        check_fitted(self)
        j = model_index(self.models_, name)
        self.memory_.drop_column(j)
        self.coef_, self.intercept_ = np.delete(self.coef_, j, axis=0), np.delete(self.intercept_, j)
        self.mean_ = np.delete(self.mean_, j)
        self.models_ = [m for m in self.models_ if m != name]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model names, plus the memory and the ridge weights."""
        arrays = {"X": self.memory_.X, "L": self.memory_.Y, "coef": self.coef_, "intercept": self.intercept_}
        return {"models": list(self.models_)}, arrays

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        X, L, self.models_ = check_lengths(arrays["X"], arrays["L"], state["models"])
        coef, intercept = np.asarray(arrays["coef"], float), np.asarray(arrays["intercept"], float)
        if coef.shape != (len(self.models_), X.shape[1]) or intercept.shape != (len(self.models_),):
            raise ValueError(f"ridge weights {coef.shape}/{intercept.shape} do not fit {len(self.models_)} "
                             f"models × {X.shape[1]} dimensions")
        self.memory_ = LabelMemory.restore(X, L)
        self.mean_ = _column_means(L, self.default)
        self.coef_, self.intercept_ = coef, intercept

