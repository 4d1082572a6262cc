"""UniRoute's cluster predictor: K-means on prompt embeddings, per-cluster quality per model.

A model is described by its mean quality in each cluster, smoothed toward its overall mean:
q[k, h] = (Σ labels of h in k + a·mean(h)) / (count of labels of h in k + a). A new model is
described the same way from a small profile set, so it joins without refitting the clusters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import (
    Estimator,
    check_fitted,
    check_int_param,
    check_labels,
    check_number_param,
    check_profile,
    check_rows,
    check_targets,
    model_index,
)

__all__ = ["ClusterQuality"]


class ClusterQuality(Estimator):
    """Routes by the quality each model reached on the prompt's K-means cluster (hard assignment).

    UniRoute's cluster-based predictor (Jitkrittum et al., 2025, arXiv:2502.08773): each model is a
    vector of per-cluster qualities, so a model never seen in training joins from a small profile set (`add_model`).

    Parameters:
        n_clusters: K-means clusters K (at most the training prompts), ≥ 1.
        smoothing: pseudo-labels a at the model's mean in each cluster's average, ≥ 0.
        random_state: the K-means seed.

    fit(X (n, d), Y (n, m) in [0, 1], NaN = unknown, models); predict(X (r, d)) → (r, m).
    ValueError for bad parameters or shapes; NotFittedError before fit.
    """

    needs_embedding = True

    def __init__(self, n_clusters: int = 16, smoothing: float = 10.0, random_state: int = 0) -> None:
        self.n_clusters = n_clusters
        self.smoothing = smoothing
        self.random_state = random_state

    def _check_params(self) -> None:
        check_int_param("n_clusters", self.n_clusters)
        check_number_param("smoothing", self.smoothing)
        if self.random_state is not None:
            check_int_param("random_state", self.random_state, low=0)

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> ClusterQuality:
        """Cluster the training embeddings, then tally each model's labels per cluster."""
        from sklearn.cluster import KMeans

        self._check_params()
        X, Y, self.models_ = check_targets(X, Y, models)
        k = min(int(self.n_clusters), len(np.unique(X, axis=0)))
        km = KMeans(n_clusters=k, n_init=1, random_state=self.random_state).fit(X)
        self.centers_ = km.cluster_centers_.astype(np.float64)
        self._init_assignment()
        self._tally(X, Y)
        return self

    def _init_assignment(self) -> None:
        """Hook run once the centres exist, before the first tally (hard assignment: nothing)."""

    def assign(self, X: np.ndarray) -> np.ndarray:
        """Cluster membership weights, shape (len(X), n_clusters); rows sum to 1."""
        check_fitted(self)
        X = check_rows(X, self.centers_.shape[1])
        # argmin ‖x − c‖² = argmax (x·c − ‖c‖²/2)
        nearest = np.argmax(X @ self.centers_.T - 0.5 * (self.centers_ ** 2).sum(axis=1), axis=1)
        return np.eye(len(self.centers_))[nearest]

    def _tally(self, X: np.ndarray, Y: np.ndarray) -> None:
        A = self.assign(X)
        labelled = ~np.isnan(Y)
        self.sums_ = A.T @ np.where(labelled, Y, 0.0)
        self.counts_ = A.T @ labelled.astype(np.float64)
        self._update_table()

    def _update_table(self) -> None:
        total = self.counts_.sum(axis=0)
        overall = np.where(total > 0, self.sums_.sum(axis=0) / np.maximum(total, 1e-12), 0.5)
        a = self.smoothing
        with np.errstate(invalid="ignore", divide="ignore"):
            table = (self.sums_ + a * overall) / (self.counts_ + a)
        # Swap in one step: a concurrent predict sees the old or the new table, never half of each.
        self.quality_ = np.where(self.counts_ + a > 0, table, overall)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality, shape (len(X), len(models_))."""
        return self.assign(X) @ self.quality_

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """Describe a new model by its per-cluster quality on its profile prompts."""
        check_fitted(self)
        X, y = check_profile(X_profile, y_profile, self.centers_.shape[1], name=name, known=self.models_)
        A = self.assign(X)
        ok = ~np.isnan(y)
        self.sums_ = np.column_stack([self.sums_, A[ok].T @ y[ok]])
        self.counts_ = np.column_stack([self.counts_, A[ok].sum(axis=0)])
        self.models_ = [*self.models_, name]
        self._update_table()

    def remove_model(self, name: str) -> None:
        """Drop a model's column."""
        check_fitted(self)
        j = model_index(self.models_, name)
        self.sums_, self.counts_ = np.delete(self.sums_, j, axis=1), np.delete(self.counts_, j, axis=1)
        self.models_ = [m for m in self.models_ if m != name]
        self._update_table()

    def observe(self, X: np.ndarray, model: str, y: np.ndarray) -> None:
        """Add observed outcomes of `model` to its cluster tallies."""
        check_fitted(self)
        j = model_index(self.models_, model)
        X, y = check_labels(X, y, self.centers_.shape[1], name=model)
        ok = ~np.isnan(y)
        A = self.assign(X[ok])
        sums, counts = self.sums_.copy(), self.counts_.copy()
        sums[:, j] += A.T @ y[ok]
        counts[:, j] += A.sum(axis=0)
        self.sums_, self.counts_ = sums, counts
        self._update_table()

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model names, plus centres and per-cluster label sums and counts."""
        return {"models": list(self.models_)}, {"centers": self.centers_, "sums": self.sums_, "counts": self.counts_}

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.models_ = [str(m) for m in state["models"]]
        self.centers_ = np.asarray(arrays["centers"], float)
        self.sums_, self.counts_ = np.asarray(arrays["sums"], float), np.asarray(arrays["counts"], float)
        K, m = len(self.centers_), len(self.models_)
        if self.centers_.ndim != 2 or self.sums_.shape != (K, m) or self.counts_.shape != (K, m):
            raise ValueError(f"cluster tallies {self.sums_.shape}/{self.counts_.shape} do not fit "
                             f"{K} centres × {m} models")
        if (self.counts_ < 0).any():
            raise ValueError("cluster label counts must be >= 0")
        self._update_table()
