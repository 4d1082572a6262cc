"""UniRoute's LearnedMap: a soft cluster assignment p(k | x) learned from training models' labels.

q(x, h) = Σₖ p(k | x) Ψ[k, h], with p(k | x) = softmax(x·W + b). W is learned so that the
training models' labels are predicted well (cross-entropy); Ψ[k, h] is model h's quality in
cluster k, tallied with the soft weights and smoothed toward h's mean. A new model only needs
its Ψ column, tallied on its profile with the learned map: no retraining.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import check_fitted, check_int_param, check_number_param, check_rows, check_targets, serial_blas
from .cluster import ClusterQuality

__all__ = ["LearnedMapQuality"]

_EPS = 1e-6


class LearnedMapQuality(ClusterQuality):
    """K-means clusters, then a learned softmax map from embedding to cluster weights.

    UniRoute's LearnedMap predictor (Jitkrittum et al., 2025, arXiv:2502.08773); a new model needs
    only its Ψ column, tallied on its profile set with the learned map.

    Parameters:
        n_clusters, smoothing, random_state: as `ClusterQuality`'s.
        l2: L2 penalty on the map's weights W, ≥ 0.
        temperature: temperature of the starting map (a softmax near the nearest centre), > 0.
        rounds: alternations of learning W and re-tallying Ψ, ≥ 1.
        max_iter: L-BFGS iterations per round, ≥ 1.

    fit(X (n, d), Y (n, m) in [0, 1], NaN = unknown, models); predict(X (r, d)) → (r, m).
    ValueError for bad parameters or shapes; NotFittedError before fit.
    """

    def __init__(
        self,
        n_clusters: int = 16,
        smoothing: float = 10.0,
        l2: float = 1e-5,
        temperature: float = 0.05,
        rounds: int = 1,
        max_iter: int = 200,
        random_state: int = 0,
    ) -> None:
        super().__init__(n_clusters=n_clusters, smoothing=smoothing, random_state=random_state)
        self.l2 = l2
        self.temperature = temperature
        self.rounds = rounds
        self.max_iter = max_iter

    def _check_params(self) -> None:
        super()._check_params()
        check_number_param("l2", self.l2)
        check_number_param("temperature", self.temperature, low_open=True)
        check_int_param("rounds", self.rounds)
        check_int_param("max_iter", self.max_iter)

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> LearnedMapQuality:
        """K-means, then alternate: learn the map for fixed Ψ, re-tally Ψ with the map."""
        X, Y, models = check_targets(X, Y, models)
        super().fit(X, Y, models)
        for _ in range(int(self.rounds)):
            self._learn_map(X, Y)
            self._tally(X, Y)
        return self

    def _init_assignment(self) -> None:
        # Start from the hard assignment: a softmax over x·c/τ − ‖c‖²/2τ ≈ the nearest centre.
        self.W_ = self.centers_.T / self.temperature
        self.b_ = -0.5 * (self.centers_ ** 2).sum(axis=1) / self.temperature

    def assign(self, X: np.ndarray) -> np.ndarray:
        """Soft cluster weights p(k | x), shape (len(X), n_clusters)."""
        check_fitted(self)
        X = check_rows(X, self.W_.shape[0])
        Z = X @ self.W_ + self.b_
        Z -= Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        return P / P.sum(axis=1, keepdims=True)

    def _learn_map(self, X: np.ndarray, Y: np.ndarray) -> None:
        from scipy.optimize import minimize

        labelled = ~np.isnan(Y)
        Y0 = np.where(labelled, Y, 0.0)
        n_labels = max(1, int(labelled.sum()))
        Psi = np.clip(self.quality_, _EPS, 1 - _EPS)
        d, K = self.W_.shape

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W, b = theta[: d * K].reshape(d, K), theta[d * K:]
            Z = X @ W + b
            Z -= Z.max(axis=1, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(axis=1, keepdims=True)
            q = np.clip(P @ Psi, _EPS, 1 - _EPS)
            nll = -np.where(labelled, Y0 * np.log(q) + (1 - Y0) * np.log(1 - q), 0.0).sum() / n_labels
            G = np.where(labelled, (q - Y0) / (q * (1 - q)), 0.0) / n_labels
            dP = G @ Psi.T
            dZ = P * (dP - (P * dP).sum(axis=1, keepdims=True))
            value = nll + 0.5 * self.l2 * float((W ** 2).sum())
            grad = np.concatenate([(X.T @ dZ + self.l2 * W).ravel(), dZ.sum(axis=0)])
            return value, grad

        theta0 = np.concatenate([self.W_.ravel(), self.b_])
        with serial_blas():
            res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": int(self.max_iter)})
        self.W_, self.b_ = res.x[: d * K].reshape(d, K), res.x[d * K:]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The cluster state plus the map's weights W and biases b."""
        learned, arrays = super()._state()
        return learned, {**arrays, "W": self.W_, "b": self.b_}

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        super()._restore(state, arrays)
        W, b = np.asarray(arrays["W"], float), np.asarray(arrays["b"], float)
        if W.shape != (self.centers_.shape[1], len(self.centers_)) or b.shape != (len(self.centers_),):
            raise ValueError(f"map weights {W.shape}/{b.shape} do not fit {self.centers_.shape} centres")
        self.W_, self.b_ = W, b
