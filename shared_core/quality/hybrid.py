"""OmniRouter's hybrid predictor: q = γ·q_parametric + (1 − γ)·q_knn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Estimator, check_fitted, check_number_param, check_targets
from .knn import KNNQuality
from .parametric import LogisticQuality

__all__ = ["HybridQuality"]


class HybridQuality(Estimator):
    """A γ-blend of per-model logistic regressions and the k-NN retrieval estimate (Mei et al., 2025, arXiv:2502.20576).

    The regression generalises across the embedding space; retrieval follows local structure
    and learns online. Unseen models reach both halves; feedback reaches the k-NN half only.

    Parameters:
        gamma: weight γ ∈ [0, 1] of the regression (1: regression only, 0: k-NN only).
        k, shrinkage: the k-NN half's (`KNNQuality`).
        C: inverse L2 strength of each regression (`LogisticQuality`); > 0.

    fit(X (n, d), Y (n, m) in [0, 1], NaN = unknown, models); predict(X (r, d)) → (r, m) in [0, 1].
    ValueError for bad parameters or shapes; NotFittedError before fit.
    """

    needs_embedding = True

    def __init__(self, gamma: float = 0.5, k: int = 200, C: float = 0.3, shrinkage: float = 0.0) -> None:
        self.gamma = gamma
        self.k = k
        self.C = C
        self.shrinkage = shrinkage

    def _check_params(self) -> None:
        check_number_param("gamma", self.gamma, 0.0, 1.0)
        for half in self.halves():
            half._check_params()

    def halves(self) -> tuple[LogisticQuality, KNNQuality]:
        """The unfitted parametric and k-NN halves this hybrid's hyper-parameters make."""
        return LogisticQuality(C=self.C), KNNQuality(k=self.k, shrinkage=self.shrinkage)

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> HybridQuality:
        """Fit both halves on the same data."""
        self._check_params()
        X, Y, models = check_targets(X, Y, models)
        parametric, knn = self.halves()
        self.parametric_, self.knn_ = parametric.fit(X, Y, models), knn.fit(X, Y, models)
        self.models_ = list(models)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality, shape (len(X), len(models_))."""
        check_fitted(self)
        return self.blend(self.parametric_.predict(X), self.knn_.predict(X), self.gamma)

    @staticmethod
    def blend(parametric: np.ndarray, knn: np.ndarray, gamma: float) -> np.ndarray:
        """The hybrid's prediction from its halves' (OmniRouter's γ-weighted mix of trained and
        retrieval estimates): γ·parametric + (1 − γ)·k-NN, elementwise."""
        return gamma * parametric + (1.0 - gamma) * knn

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """Add a model to both halves from its profile."""
        check_fitted(self)
        self.parametric_.add_model(name, X_profile, y_profile)
        try:
            self.knn_.add_model(name, X_profile, y_profile)
        except Exception:
            self.parametric_.remove_model(name)
            raise
        self.models_ = [*self.models_, name]

    def remove_model(self, name: str) -> None:
        """Drop a model from both halves."""
        check_fitted(self)
        self.knn_.remove_model(name)
        self.parametric_.remove_model(name)
        self.models_ = [m for m in self.models_ if m != name]

    def observe(self, X: np.ndarray, model: str, y: np.ndarray) -> None:
        """Remember observed outcomes in the k-NN memory (the regressions stay as fitted)."""
        check_fitted(self)
        self.knn_.observe(X, model, y)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Both halves' states, their arrays under prefixed keys."""
        learned: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, half in (("parametric", self.parametric_), ("knn", self.knn_)):
            learned[name], half_arrays = half.get_state()
            arrays.update({f"{name}.{k}": v for k, v in half_arrays.items()})
        return learned, arrays

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        parametric = LogisticQuality.from_state(state["parametric"], _prefixed(arrays, "parametric."))
        knn = KNNQuality.from_state(state["knn"], _prefixed(arrays, "knn."))
        if parametric.models_ != knn.models_:
            raise ValueError("the hybrid's parametric and k-NN halves name different models")
        # The halves are what was fitted, so their C, k and shrinkage are the hybrid's (routers
        # saved before the hybrid wrote its own hyper-parameters hold these only in the halves).
        self.set_params(C=parametric.C, k=knn.k, shrinkage=knn.shrinkage)
        self.parametric_, self.knn_, self.models_ = parametric, knn, list(knn.models_)


def _prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
