"""Evaluation: deferral curves, their area (AUDC), quality-neutral cost and accuracy at a budget.

Definitions (fixed, so figures compare across tools):

- Each λ of a dense sweep (λ = 0 and "cheapest model only" included) routes every test prompt to
  argmaxⱼ (q̂ᵢⱼ − λ ĉᵢⱼ) and gives one point: x = realised test cost / cost of sending every test
  prompt to the reference model, y = mean realised quality (missing labels skipped).
- a(x) = the best y among points with cost ≤ x; below every point, the y of the cheapest point.
- AUDC = ∫₀¹ a(x) dx, AUDC50 = ∫₀^0.5 a(x) dx; QNC = the smallest x with a(x) ≥ the reference
  model's test accuracy (None if no point reaches it).
- The reference model is the most accurate model on the training split.

Budget runs spend a fraction of the reference cost on the test set: in one batch (the solver),
online (prompts one at a time through a paced session, settled with the dataset's actual costs),
or per query with a fixed λ calibrated on the training split (the RouteLLM-style baseline).
Accuracy of a run: mean true quality of the chosen models, missing labels skipped, a refused
prompt (no budget left) counted as wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .budget import Budget, BudgetExceeded
from .solver import solve

if TYPE_CHECKING:
    from .data import RoutingDataset
    from .estimation import Estimate
    from .router import Router

__all__ = [
    "Curve",
    "route_argmax",
    "lambda_grid",
    "deferral_curve",
    "oracle_curve",
    "prior_curve",
    "realised",
    "reference_column",
    "summarise",
    "BudgetRun",
    "batch_run",
    "online_run",
    "replay_order",
    "calibrate_lambda",
    "fixed_lambda_run",
    "ORDERS",
]

#: Orders an online replay can take: the file's, shuffled, or sorted by task (adversarial).
ORDERS = ("as-is", "random", "grouped")


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
        for x, y in zip(xs, ys, strict=False):
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
        return [[float(x), float(y)] for x, y in zip(self.x, self.y, strict=False)]


# Elements per (λ × rows × models) block of a deferral curve's sweep.
_SWEEP_BLOCK = 1 << 20


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
    """The deferral curve of the router that scores q_pred − λ·c_pred, measured on the truths.

    All four arrays are (n, m) with n ≥ 1: predicted quality and cost (USD; +inf for a model never
    to choose; NaN is refused), true quality (NaN = unknown, skipped) and true cost. ValueError
    for shapes that disagree, NaN predictions or reference_cost ≤ 0."""
    q_pred, c_pred = np.asarray(q_pred, float), np.asarray(c_pred, float)
    q_true, c_true = np.asarray(q_true, float), np.asarray(c_true, float)
    if q_pred.ndim != 2 or not q_pred.shape == c_pred.shape == q_true.shape == c_true.shape or not len(q_pred):
        raise ValueError("q_pred, c_pred, q_true and c_true must share one (n, m) shape with n >= 1, got "
                         f"{q_pred.shape}, {c_pred.shape}, {q_true.shape}, {c_true.shape}")
    for name, values in (("q_pred", q_pred), ("c_pred", c_pred)):
        if np.isnan(values).any():
            rows = np.flatnonzero(np.isnan(values).any(axis=1))
            raise ValueError(f"{name} has NaN in {len(rows)} rows (first: {rows[:5].tolist()}): a router "
                             "cannot rank a model by an unknown prediction")
    if not reference_cost > 0:
        raise ValueError(f"reference_cost must be > 0, got {reference_cost}")
    lams = lambda_grid(q_pred, c_pred) if lambdas is None else np.atleast_1d(np.asarray(lambdas, float))
    chs = list(_route_sweep(q_pred, c_pred, lams))
    ls = [float(lam) for lam in lams]
    cheapest = np.full(len(q_true), int(np.argmin(np.nanmean(c_pred, axis=0))))
    chs.append(cheapest)
    ls.append(np.inf)
    rows = np.arange(len(q_true))
    choices = np.asarray(chs).reshape(len(chs), len(q_true))
    q = q_true[rows, choices]  # (λ, n)
    labelled = (~np.isnan(q)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ys = np.where(labelled > 0, np.nansum(q, axis=1) / labelled, np.nan)
    xs = np.nansum(c_true[rows, choices], axis=1) / reference_cost
    order = np.argsort(xs, kind="stable")
    return Curve(xs[order], ys[order], np.asarray(ls)[order], choices[order] if keep_choices else None)


def _route_sweep(q_pred: np.ndarray, c_pred: np.ndarray, lams: np.ndarray) -> Iterator[np.ndarray]:
    """route_argmax for each λ in turn, computed for blocks of λ at once (bounded temporaries)."""
    step = max(1, _SWEEP_BLOCK // max(1, q_pred.size))
    for start in range(0, len(lams), step):
        lam = lams[start:start + step, None, None]
        score = q_pred[None] - lam * c_pred[None]  # (λ, n, m): the same arithmetic as route_argmax
        tied = score >= score.max(axis=2, keepdims=True) - 1e-12
        yield from np.where(tied, c_pred[None], np.inf).argmin(axis=2)


def oracle_curve(q_true: np.ndarray, c_true: np.ndarray, reference_cost: float) -> Curve:
    """The per-query oracle's curve: routing with the true qualities and costs."""
    q = np.nan_to_num(q_true, nan=0.0)
    return deferral_curve(q, np.nan_to_num(c_true, nan=np.inf), q_true, c_true, reference_cost)


def prior_curve(train_quality: np.ndarray, train_cost: np.ndarray, q_true: np.ndarray, c_true: np.ndarray,
                reference_cost: float) -> Curve:
    """The prompt-blind baseline: every prompt scored by each model's mean training quality and cost."""
    n = len(q_true)
    q = np.tile(np.nanmean(train_quality, axis=0), (n, 1))
    c = np.tile(np.nanmean(train_cost, axis=0), (n, 1))
    return deferral_curve(q, c, q_true, c_true, reference_cost)


def reference_column(train_quality: np.ndarray) -> int:
    """The column of the reference model: the most accurate on the training split."""
    return int(np.nanargmax(np.nanmean(train_quality, axis=0)))


def summarise(curve: Curve, reference_accuracy: float, fractions: Sequence[float]) -> dict[str, Any]:
    """The JSON summary of a curve: audc, audc50, qnc, accuracy_at {fraction: a(x)} and the points."""
    return {
        "audc": curve.area(1.0),
        "audc50": curve.area(0.5),
        "qnc": curve.qnc(reference_accuracy),
        "accuracy_at": {f"{f:g}": curve.a(f) for f in fractions},
        "curve": curve.as_list(),
    }


@dataclass(frozen=True)
class BudgetRun:
    """One budget run over a test set: the money allowed and spent, the accuracy, each prompt's model."""

    predictor: str
    mode: str
    budget_fraction: float
    budget_usd: float
    spent_usd: float
    accuracy: float
    choice: np.ndarray

    @property
    def refused(self) -> int:
        """Prompts the run could not route (no candidate fitted what was left of the budget)."""
        return int((self.choice < 0).sum())

    @property
    def name(self) -> str:
        """The run's label, e.g. "batch@0.25"."""
        return f"{self.mode}@{self.budget_fraction:g}"

    def to_dict(self) -> dict[str, Any]:
        """The `budget_runs` entry of `omniroute eval --json`."""
        return {
            "predictor": self.predictor, "mode": self.mode, "budget_fraction": self.budget_fraction,
            "budget_usd": self.budget_usd, "spent_usd": self.spent_usd, "accuracy": self.accuracy,
            "refused": self.refused,
        }


def _outcome(choice: np.ndarray, q_true: np.ndarray, c_true: np.ndarray) -> tuple[float, float]:
    """(spend, accuracy) of routing row i to column choice[i]; choice −1 is a refusal (free, wrong)."""
    rows = np.flatnonzero(choice >= 0)
    q = np.zeros(len(choice))
    q[rows] = q_true[rows, choice[rows]]
    labelled = ~np.isnan(q)
    return float(c_true[rows, choice[rows]].sum()), float(q[labelled].mean()) if labelled.any() else float("nan")


def batch_run(estimate: Estimate, test: RoutingDataset, budget_usd: float, budget_fraction: float,
              predictor: str = "") -> BudgetRun:
    """Route the whole test set at once with the batch solver on its predictions, then measure it on the truths."""
    if list(estimate.candidates) != list(test.models):
        raise ValueError("the estimate's candidates must be the dataset's models, in its order")
    choice = solve(estimate.quality, estimate.cost, budget=budget_usd).choice
    spent, acc = _outcome(choice, test.quality, cast(np.ndarray, test.cost))  # evaluation needs costs
    return BudgetRun(predictor, "batch", budget_fraction, budget_usd, spent, acc, choice)


def replay_order(tasks: np.ndarray, order: str, seed: int = 0) -> np.ndarray:
    """Row indices in replay order: "as-is", "random" (seeded) or "grouped" (sorted by task)."""
    if order == "as-is":
        return np.arange(len(tasks))
    if order == "random":
        return np.random.default_rng(seed).permutation(len(tasks))
    if order == "grouped":
        return np.argsort(np.asarray(tasks, dtype=str), kind="stable")
    raise ValueError(f"unknown order {order!r}; choose one of {list(ORDERS)}")


def online_run(
    router: Router,
    test: RoutingDataset,
    budget_usd: float,
    budget_fraction: float,
    *,
    order: str = "grouped",
    seed: int = 0,
    predictor: str = "",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> BudgetRun:
    """Replay the test prompts one at a time through one paced session (horizon = the test size).

    Each request is decided from its prompt alone, then settled with the dataset's actual cost of
    the chosen model; a request nothing fits any more is refused. An answer longer than the output
    cap the router reserved for it (a cap lowered to fit the budget's end) would have been cut: it
    counts as wrong and costs its input plus the cap (datasets with responses only).
    """
    scope = f"eval-online-{uuid.uuid4().hex}"  # a fresh session: budgets keep what was spent
    router.set_budget(scope, Budget(usd=budget_usd, horizon=len(test)))
    choice = np.full(len(test), -1)
    quality, cost = test.quality.copy(), cast(np.ndarray, test.cost).copy()  # evaluation needs costs
    written = test.output_tokens()
    rows = replay_order(test.task, order, seed)
    for i in progress(rows) if progress is not None else rows:
        try:
            decision = router.decide(test.prompts[i], scope)
        except BudgetExceeded:
            continue
        j = choice[i] = test.models.index(decision.chosen)
        cap = decision.output_cap
        if written is not None and cap is not None and written[i, j] > cap:
            candidate = router.candidate(decision.chosen)
            cost[i, j] -= candidate.cost(0, written[i, j] - cap) - candidate.request_price
            quality[i, j] = 0.0
        router.settle(decision, cost=float(cost[i, j]))
    spent, acc = _outcome(choice, quality, cost)
    return BudgetRun(predictor, "online", budget_fraction, budget_usd, spent, acc, choice)


def calibrate_lambda(q_pred: np.ndarray, c_pred: np.ndarray, c_true: np.ndarray, spend_usd: float) -> float:
    """The smallest fixed λ whose per-query routing of the (training) rows spends ≤ `spend_usd`.

    RouteLLM-style threshold calibration: the spend is measured with the rows' true costs.
    """
    rows = np.arange(len(q_pred))

    def spend(lam: float) -> float:
        return float(c_true[rows, route_argmax(q_pred, c_pred, lam)].sum())

    if spend(0.0) <= spend_usd:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(200):  # bracket: spend falls as λ grows, to the cheapest predictions
        if spend(hi) <= spend_usd:
            break
        lo, hi = hi, hi * 4.0
    else:
        return hi
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spend(mid) > spend_usd else (lo, mid)
    return hi


def fixed_lambda_run(
    q_pred: np.ndarray, c_pred: np.ndarray, test: RoutingDataset, lam: float, budget_usd: float,
    budget_fraction: float, predictor: str = "",
) -> BudgetRun:
    """Per-query routing of the test rows with one fixed λ, measured on the truths."""
    choice = route_argmax(q_pred, c_pred, lam)
    spent, acc = _outcome(choice, test.quality, cast(np.ndarray, test.cost))  # evaluation needs costs
    return BudgetRun(predictor, "fixed-lambda", budget_fraction, budget_usd, spent, acc, choice)
