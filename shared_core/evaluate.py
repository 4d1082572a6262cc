"""Evaluation: deferral curves, their area (AUDC), quality-neutral cost and accuracy at a budget.

Definitions (fixed, so figures compare across tools):

- Each λ of a dense sweep (λ = 0 and "cheapest model only" included) routes every test prompt to
  argmaxⱼ (q̂ᵢⱼ − λ ĉᵢⱼ) and gives one point: x = realised test cost / cost of sending every test
  prompt to the reference model, y = mean realised quality (missing labels skipped).
- a(x) = the best y among points with cost ≤ x; below every point, the y of the cheapest point.
- AUDC = ∫₀¹ a(x) dx, AUDC50 = ∫₀^0.5 a(x) dx; QNC = the smallest x with a(x) ≥ the reference
  model's test accuracy (None if no point reaches it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Curve",
    "route_argmax",
    "lambda_grid",
    "deferral_curve",
    "oracle_curve",
    "realised",
]


@dataclass(frozen=True)
class Curve:
    """Deferral-curve points (cost fraction, accuracy), sorted by cost, with the λ of each."""

    x: np.ndarray
    y: np.ndarray
    lambdas: np.ndarray
    choices: np.ndarray | None = None

    def a(self, x: float) -> float:
        """Best accuracy reachable at cost fraction ≤ x (the cheapest point's below all points)."""
        ok = self.x <= x + 1e-12
        if not ok.any():
            return float(self.y[np.argmin(self.x)])
        return float(self.y[ok].max())

    def area(self, upper: float = 1.0) -> float:
        """∫₀^upper a(x) dx, integrated exactly over the step function."""
        order = np.argsort(self.x, kind="stable")
        xs, ys = self.x[order], np.maximum.accumulate(self.y[order])
        total, prev_x, level = 0.0, 0.0, float(self.y[np.argmin(self.x)])
        for x, y in zip(xs, ys):
            if x >= upper:
                break
            if x > prev_x:
                total += (x - prev_x) * level
                prev_x = x
            level = max(level, float(y))
        return total + max(0.0, upper - prev_x) * level

    def qnc(self, target: float) -> float | None:
        """The smallest cost fraction whose best accuracy reaches `target`, or None."""
        ok = self.y >= target - 1e-12
        return float(self.x[ok].min()) if ok.any() else None

    def as_list(self) -> list[list[float]]:
        """[[cost_fraction, accuracy], ...] sorted by cost."""
        return [[float(x), float(y)] for x, y in zip(self.x, self.y)]


def route_argmax(q_pred: np.ndarray, c_pred: np.ndarray, lam: float, feasible: np.ndarray | None = None) -> np.ndarray:
    """Column index per row of argmaxⱼ (q − λc); ties go to the cheaper model."""
    score = q_pred - lam * c_pred
    if feasible is not None:
        score = np.where(feasible, score, -np.inf)
    best = score.max(axis=1, keepdims=True)
    # Among (near-)ties pick the cheapest, so λ = 0 does not pay for nothing.
    tied = score >= best - 1e-12
    return np.where(tied, c_pred, np.inf).argmin(axis=1)


def lambda_grid(q_pred: np.ndarray, c_pred: np.ndarray, n: int = 400) -> np.ndarray:
    """λ = 0 plus a log-spaced sweep from 'no model switches away' to 'cheapest always wins'."""
    dq = np.abs(q_pred[:, :, None] - q_pred[:, None, :])
    dc = np.abs(c_pred[:, :, None] - c_pred[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = dq / dc
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    if ratio.size == 0:
        return np.array([0.0])
    lo, hi = np.percentile(ratio, 0.1), ratio.max()
    return np.concatenate([[0.0], np.geomspace(lo * 0.5, hi * 2.0, n)])


def realised(choice: np.ndarray, q_true: np.ndarray, c_true: np.ndarray) -> tuple[float, float]:
    """(total cost, mean quality skipping missing labels) of routing row i to column choice[i]."""
    rows = np.arange(len(choice))
    q = q_true[rows, choice]
    return float(np.nansum(c_true[rows, choice])), float(np.nanmean(q)) if (~np.isnan(q)).any() else float("nan")


def deferral_curve(
    q_pred: np.ndarray,
    c_pred: np.ndarray,
    q_true: np.ndarray,
    c_true: np.ndarray,
    reference_cost: float,
    lambdas: np.ndarray | None = None,
    keep_choices: bool = False,
) -> Curve:
    """The deferral curve of the router that scores q_pred − λ·c_pred, measured on the truths."""
    q_pred, c_pred = np.asarray(q_pred, float), np.asarray(c_pred, float)
    if q_pred.shape != c_pred.shape or q_pred.shape != q_true.shape or c_true.shape != q_true.shape:
        raise ValueError("q_pred, c_pred, q_true and c_true must share one (n, m) shape")
    if not reference_cost > 0:
        raise ValueError(f"reference_cost must be > 0, got {reference_cost}")
    lams = lambda_grid(q_pred, c_pred) if lambdas is None else np.asarray(lambdas, float)
    xs, ys, ls, chs = [], [], [], []
    for lam in lams:
        ch = route_argmax(q_pred, c_pred, float(lam))
        cost, acc = realised(ch, q_true, c_true)
        xs.append(cost / reference_cost), ys.append(acc), ls.append(lam), chs.append(ch)
    cheapest = np.full(len(q_true), int(np.argmin(np.nanmean(c_pred, axis=0))))
    cost, acc = realised(cheapest, q_true, c_true)
    xs.append(cost / reference_cost), ys.append(acc), ls.append(np.inf), chs.append(cheapest)
    order = np.argsort(xs, kind="stable")
    return Curve(
        np.asarray(xs)[order], np.asarray(ys)[order], np.asarray(ls)[order],
        np.asarray(chs)[order] if keep_choices else None,
    )


def oracle_curve(q_true: np.ndarray, c_true: np.ndarray, reference_cost: float) -> Curve:
    """The per-query oracle's curve: routing with the true qualities and costs."""
    q = np.nan_to_num(q_true, nan=0.0)
    return deferral_curve(q, np.nan_to_num(c_true, nan=np.inf), q_true, c_true, reference_cost)
