"""Retrieval estimate of quality: the mean label of the k most similar remembered prompts."""

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
from .memory import LabelMemory

__all__ = ["KNNQuality"]


class KNNQuality(Estimator):
    """Per model, the mean quality of the k nearest (cosine) training prompts labelled for it.

    The retrieval half of OmniRouter's hybrid predictor (Mei et al., 2025, arXiv:2502.20576); models added from a
    profile set are UniRoute's unseen models (Jitkrittum et al., 2025, arXiv:2502.08773).

    Parameters:
        k: neighbours averaged for the best-labelled model (a model with fewer labels uses
            proportionally fewer); ≥ 1.
        shrinkage: pseudo-labels at the model's overall mean added to every average, which
            steadies models with few labels; ≥ 0.
        max_feedback: feedback rows remembered; past it the oldest tenth is forgotten at once
            (training and profile rows never are), so memory and latency stay flat; ≥ 1.

    fit(X (n, d), Y (n, m) in [0, 1] with NaN = unknown, models); predict(X (r, d)) → (r, m).
    New models (`add_model`) and feedback (`observe`) join the memory without a refit.
    ValueError for bad parameters or shapes; NotFittedError before fit.
    """

    needs_embedding = True

    def __init__(self, k: int = 200, shrinkage: float = 0.0, max_feedback: int = 10_000) -> None:
        self.k = k
        self.shrinkage = shrinkage
        self.max_feedback = max_feedback

    def _check_params(self) -> None:
        check_int_param("k", self.k)
        check_number_param("shrinkage", self.shrinkage)
        check_int_param("max_feedback", self.max_feedback)

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> KNNQuality:
        """Remember the training embeddings and their qualities (NaN labels are never counted)."""
        self._check_params()
        X, Y, self.models_ = check_targets(X, Y, models)
        self.memory_ = LabelMemory(X, Y)
        self.feedback_rows_ = np.empty(0, dtype=np.int64)  # memory rows that are feedback, oldest first
        self._update_means()
        return self

    def _update_means(self) -> None:
        # The memory keeps its label sums and counts up to date as rows come and go, so this is O(models).
        sums, counts = self.memory_.label_sums()
        self.mean_ = np.where(counts > 0, sums / np.maximum(counts, 1), 0.5)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality, shape (len(X), len(models_))."""
        check_fitted(self)
        X = check_rows(X, self.memory_.X.shape[1])
        return self.memory_.neighbour_means(X, int(self.k), self.mean_, self.shrinkage)

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """Remember a new model's profile prompts, labelled for it alone."""
        check_fitted(self)
        X, y = check_profile(X_profile, y_profile, self.memory_.X.shape[1], name=name, known=self.models_)
        self.memory_.add_column(X, y)
        self.models_ = [*self.models_, name]
        self._update_means()

    def remove_model(self, name: str) -> None:
        """Forget a model and every remembered prompt only it was labelled on."""
        check_fitted(self)
        j = model_index(self.models_, name)
        self._keep_rows(self.memory_.drop_column(j))
        self.models_ = [m for m in self.models_ if m != name]
        self._update_means()

    def observe(self, X: np.ndarray, model: str, y: np.ndarray) -> None:
        """Remember prompts answered by `model` with qualities y (one new memory row each)."""
        check_fitted(self)
        j = model_index(self.models_, model)
        X, y = check_labels(X, y, self.memory_.X.shape[1], name=model)
        Y = np.full((len(X), len(self.models_)), np.nan)
        Y[:, j] = y
        start = len(self.memory_.X)
        # Room for the feedback bound at once: growing the memory copies it, and should happen once.
        self.memory_.append(X, Y, room=int(self.max_feedback) - len(self.feedback_rows_))
        self.feedback_rows_ = np.concatenate([self.feedback_rows_, np.arange(start, start + len(X))])
        excess = len(self.feedback_rows_) - int(self.max_feedback)
        if excess > 0:
            oldest = excess + int(self.max_feedback) // 10  # a tenth at once: eviction stays amortised
            self._keep_rows(self.memory_.forget(self.feedback_rows_[:oldest]))
        self._update_means()

    def _keep_rows(self, keep: np.ndarray) -> None:
        """Renumber the feedback rows after the memory kept only `keep` (bool per old row)."""
        new_index = np.cumsum(keep) - 1
        rows = self.feedback_rows_
        self.feedback_rows_ = new_index[rows[keep[rows]]]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model names, plus the remembered embeddings and labels and which rows are feedback."""
        return ({"models": list(self.models_)},
                {"X": self.memory_.X, "Y": self.memory_.Y, "feedback_rows": self.feedback_rows_})

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        X, Y, self.models_ = check_targets(arrays["X"], arrays["Y"], state["models"])
        self.memory_ = LabelMemory.restore(X, Y)
        # Routers saved before feedback was bounded kept none apart: theirs is all remembered.
        rows = np.asarray(arrays.get("feedback_rows", np.empty(0)), dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= len(X))):
            raise ValueError("feedback_rows must be row indices of the memory")
        self.feedback_rows_ = rows
        self._update_means()
