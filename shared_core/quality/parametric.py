"""Parametric estimate of quality: one L2-regularised logistic regression per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import (
    Estimator,
    check_fitted,
    check_number_param,
    check_profile,
    check_rows,
    check_targets,
    model_index,
    serial_blas,
)

__all__ = ["LogisticQuality", "fit_logistic"]


def fit_logistic(X: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """Weights and intercept of P(good | x) from labels y in [0, 1] (NaN skipped).

    A label q between 0 and 1 counts as a positive of weight q plus a negative of weight 1 − q.
    Labels that are all alike give a constant, the smoothed mean (Laplace's rule).
    """
    from sklearn.linear_model import LogisticRegression

    ok = ~np.isnan(y)
    X, y = X[ok], y[ok]
    pos, neg = y > 0, y < 1
    if not pos.any() or not neg.any():
        p = (y.sum() + 1.0) / (len(y) + 2.0)
        return np.zeros(X.shape[1]), float(np.log(p / (1.0 - p)))
    Xa = np.concatenate([X[pos], X[neg]])
    ta = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())])
    wa = np.concatenate([y[pos], 1.0 - y[neg]])
    lr = LogisticRegression(C=C, max_iter=1000).fit(Xa, ta, sample_weight=wa)
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


class LogisticQuality(Estimator):
    """P(answer is good | prompt) per model by logistic regression on the prompt embedding.

    The parametric half of OmniRouter's hybrid predictor (Mei et al., 2025, arXiv:2502.20576).

    Parameters:
        C: inverse L2 regularisation strength (scikit-learn's), > 0.

    fit(X (n, d), Y (n, m) in [0, 1], NaN = unknown, models): a label q between 0 and 1 counts as a
    positive of weight q and a negative of weight 1 − q; predict(X (r, d)) → (r, m) in (0, 1).
    ValueError for bad parameters or shapes; NotFittedError before fit.
    """

    needs_embedding = True

    def __init__(self, C: float = 0.3) -> None:
        self.C = C

    def _check_params(self) -> None:
        check_number_param("C", self.C, low_open=True)

    def fit(self, X: np.ndarray, Y: np.ndarray, models: Sequence[str]) -> LogisticQuality:
        """One regression per model column, each on the rows where that model has a label."""
        self._check_params()
        X, Y, self.models_ = check_targets(X, Y, models)
        with serial_blas():
            fits = [fit_logistic(X, Y[:, j], self.C) for j in range(Y.shape[1])]
        self.coef_ = np.array([w for w, _ in fits]).reshape(len(fits), X.shape[1])
        self.intercept_ = np.array([b for _, b in fits])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted quality, shape (len(X), len(models_))."""
        check_fitted(self)
        X = check_rows(X, self.coef_.shape[1])
        return 1.0 / (1.0 + np.exp(-(X @ self.coef_.T + self.intercept_)))

    def add_model(self, name: str, X_profile: np.ndarray, y_profile: np.ndarray) -> None:
        """Fit a regression for a new model on its profile alone."""
        check_fitted(self)
        X, y = check_profile(X_profile, y_profile, self.coef_.shape[1], name=name, known=self.models_)
        w, b = fit_logistic(X, y, self.C)
        self.coef_, self.intercept_ = np.vstack([self.coef_, w]), np.append(self.intercept_, b)
        self.models_ = [*self.models_, name]

    def remove_model(self, name: str) -> None:
        """Drop a model's regression."""
        check_fitted(self)
        j = model_index(self.models_, name)
        self.coef_, self.intercept_ = np.delete(self.coef_, j, axis=0), np.delete(self.intercept_, j)
        self.models_ = [m for m in self.models_ if m != name]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Model names, plus the weights and intercepts."""
        return {"models": list(self.models_)}, {"coef": self.coef_, "intercept": self.intercept_}

    def _restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        coef, intercept = np.asarray(arrays["coef"], float), np.asarray(arrays["intercept"], float)
        models = [str(m) for m in state["models"]]
        if coef.ndim != 2 or coef.shape[0] != len(models) or intercept.shape != (len(models),):
            raise ValueError(f"logistic weights {coef.shape} / {intercept.shape} do not fit {len(models)} models")
        self.models_, self.coef_, self.intercept_ = models, coef, intercept
