"""Choosing the quality predictor on the user's own data: k-fold cross-validated AUDC.

No predictor is best on every dataset (k-NN leads on RouterBench, the learned cluster map on
LLMRouter's set, and on others the parametric or cluster predictors do), and a default tuned on
one dataset is a guess on the next. `select_predictor` scores a grid of predictors and their
main hyper-parameters by the area under the deferral curve (AUDC; Hu et al., "RouterBench",
2024) on held-out folds of the training split, and `fit_router(dataset, "auto")` fits the
winner on the whole split. The held-out routers rank prompts by each predictor's quality and
the fold's recorded costs, so the comparison is of quality predictions alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .evaluate import deferral_curve, reference_column
from .progress import progress

__all__ = ["PredictorSpec", "Selection", "DEFAULT_GRID", "DEFAULT_FOLDS", "select_predictor"]

#: Folds of the cross-validation.
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class PredictorSpec:
    """A quality predictor by registry name (`fitting.PREDICTORS`) with hyper-parameters."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """"knn(k=200)", "parametric(C=0.3)", ...: how tables name it."""
        args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({args})"


#: The grid `auto` searches: each predictor around its published or cross-validated default.
DEFAULT_GRID: tuple[PredictorSpec, ...] = (
    *(PredictorSpec("knn", {"k": k}) for k in (50, 100, 200, 400)),
    *(PredictorSpec("parametric", {"C": c}) for c in (0.1, 0.3, 1.0)),
    *(PredictorSpec("hybrid", {"gamma": g}) for g in (0.25, 0.5, 0.75)),
    *(PredictorSpec("cluster", {"n_clusters": n}) for n in (8, 16, 32)),
    PredictorSpec("learned-map", {"n_clusters": 16}),
)


@dataclass(frozen=True)
class Selection:
    """The cross-validation's outcome: one row per spec (mean AUDC, its standard error over the
    folds, seconds to fit and predict all folds), best first, and the spec chosen."""

    rows: list[dict[str, Any]]
    best: PredictorSpec
    folds: int

    def table(self) -> str:
        """The rows as a fixed-width text table."""
        lines = [f"{'predictor':<28} {'CV AUDC':>8} {'± s.e.':>7} {'seconds':>8}"]
        for row in self.rows:
            mark = "  ← chosen" if row["spec"] == self.best else ""
            lines.append(f"{row['spec'].label:<28} {row['audc']:>8.4f} {row['se']:>7.4f} {row['seconds']:>8.2f}{mark}")
        return "\n".join(lines)


def _folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Each row's fold (seeded, balanced)."""
    return np.random.default_rng(seed).permutation(n) % folds


def select_predictor(
    X: np.ndarray,
    Y: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str],
    make: Callable[[PredictorSpec], Any],
    *,
    grid: Sequence[PredictorSpec] = DEFAULT_GRID,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    show_progress: bool = False,
) -> Selection:
    """Score each spec of `grid` by `folds`-fold cross-validated AUDC and return them, best first.

    X: (n, d) prompt embeddings; Y: (n, m) observed quality in [0, 1] (NaN = unlabelled); cost:
    (n, m) recorded USD per prompt and model; `make(spec)` builds an unfitted predictor. On each
    fold a predictor is fitted on the other folds, and the router scoring its predicted quality
    − λ·cost is swept over λ on the held-out rows; AUDC is the area under that curve, cost
    measured as a fraction of sending every held-out prompt to the model most accurate on the
    fitted rows. Raises ValueError for shapes that disagree, fewer than 2 folds, or fewer rows
    than 2 per fold.
    """
    X, Y, cost = np.asarray(X, float), np.asarray(Y, float), np.asarray(cost, float)
    n = len(Y)
    if X.shape[0] != n or Y.shape != cost.shape or Y.shape[1] != len(models):
        raise ValueError(f"X {X.shape}, Y {Y.shape}, cost {cost.shape} and {len(models)} models disagree")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    if n < 2 * folds:
        raise ValueError(f"cross-validation with {folds} folds needs at least {2 * folds} rows, got {n}")
    if not grid:
        raise ValueError("the grid of predictors to choose from is empty")
    fold = _folds(n, folds, seed)
    scores = np.full((len(grid), folds), np.nan)
    seconds = np.zeros(len(grid))
    steps = [(f, i) for f in range(folds) for i in range(len(grid))]
    held_cost = np.nan_to_num(cost, nan=np.inf)  # a model without a recorded cost is never chosen
    for f, i in progress(steps, label=f"choosing the predictor: {len(grid)} candidates × {folds} folds",
                         enabled=show_progress):
        fit, held = fold != f, fold == f
        ref = reference_column(Y[fit])
        ref_cost = float(np.nansum(cost[held, ref]))
        if not ref_cost > 0:
            continue
        start = time.perf_counter()
        q = make(grid[i]).fit(X[fit], Y[fit], list(models)).predict(X[held])
        seconds[i] += time.perf_counter() - start
        scores[i, f] = deferral_curve(q, held_cost[held], Y[held], cost[held], ref_cost).area()
    if np.isnan(scores).all():
        raise ValueError("no fold has a reference model with a positive recorded cost to measure AUDC against")
    audc = np.nanmean(scores, axis=1)
    se = np.nanstd(scores, axis=1) / np.sqrt(np.sum(~np.isnan(scores), axis=1))
    order = np.argsort(-audc, kind="stable")
    rows = [{"spec": grid[i], "audc": float(audc[i]), "se": float(se[i]), "seconds": float(seconds[i])}
            for i in order]
    return Selection(rows=rows, best=grid[int(order[0])], folds=folds)
