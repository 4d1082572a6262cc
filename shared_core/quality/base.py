"""The interface every quality predictor follows (scikit-learn habits: fit, predict, state_)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import NotFittedError

__all__ = [
    "QualityPredictor", "ExtensiblePredictor", "OnlinePredictor", "check_targets", "check_fitted",
    "check_rows", "check_labels", "check_profile", "model_index",
]


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


@runtime_checkable
class ExtensiblePredictor(Protocol):
    """A predictor that takes in a model described only by a small labelled profile set (UniRoute)."""

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """Describe model `name` by its labels y on the profile embeddings X (no refit of the rest)."""
        ...

    def remove_model(self, name: str) -> None:
        """Forget model `name`."""
        ...


@runtime_checkable
class OnlinePredictor(Protocol):
    """A predictor that learns from single observed outcomes after it was fitted."""

    def observe(self, X: np.ndarray, model: str, y: np.ndarray) -> None:
        """Learn that `model` reached qualities y on prompts X."""
        ...


def check_fitted(predictor: object) -> None:
    """RuntimeError naming the class when `predictor` has not been fitted yet."""
    if not hasattr(predictor, "models_"):
        raise NotFittedError(f"{type(predictor).__name__} is not fitted: call fit(X, Y, models) first")


def check_rows(X: np.ndarray, dim: int) -> np.ndarray:
    """X as a float (n, dim) array, or ValueError naming the shape it has."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {X.shape}")
    return X


def check_labels(
    X: np.ndarray, y: np.ndarray, dim: int, *, name: str, lo: float = 0.0, hi: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (X, y) for one model: aligned, at least one label, values in [lo, hi] or NaN."""
    X = check_rows(X, dim)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"{len(X)} prompts but {len(y)} labels for model {name!r}")
    finite = y[~np.isnan(y)]
    if finite.size == 0:
        raise ValueError(f"no labels for model {name!r} (all NaN)")
    if finite.min() < lo or (hi is not None and finite.max() > hi):
        bounds = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"labels for model {name!r} must be {bounds} (NaN marks a missing label)")
    return X, y


def check_profile(
    X: np.ndarray, y: np.ndarray, dim: int, *, name: str, known: Sequence[str], lo: float = 0.0, hi: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """check_labels for a model not yet in `known` (ValueError if the name is taken or empty)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in known:
        raise ValueError(f"model {name!r} is already known; remove it first")
    return check_labels(X, y, dim, name=name, lo=lo, hi=hi)


def model_index(models: Sequence[str], name: str) -> int:
    """Column of `name` in `models`, or KeyError listing the known ones."""
    try:
        return list(models).index(name)
    except ValueError:
        raise KeyError(f"unknown model {name!r}; known models are {list(models)}") from None
