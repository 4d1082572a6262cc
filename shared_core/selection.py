"""Choosing the quality predictor on the user's own data: k-fold cross-validated AUDC.

No predictor is best on every dataset (k-NN leads on RouterBench's test split, k-NN with a
smaller k on LLMRouter's, the cluster predictors on others), and a default tuned on one dataset
is a guess on the next. `select_predictor` scores a grid of predictors and their main
hyper-parameters by the area under the deferral curve (AUDC; Hu et al., "RouterBench", 2024) on
held-out folds of the training split; `fit_router(dataset, "auto")` fits the choice on the whole
split. The held-out routers rank prompts by each predictor's quality and the fold's recorded
costs, so the comparison is of quality predictions alone.

Differences between good predictors are often inside the folds' noise, and a choice made on
noise is as likely to be worse on new prompts as better. So the grid's baseline (k-NN, k = 200,
the default before `auto`) is kept unless another spec beats it on the same folds by more than
`margin` standard errors of the paired difference: two by default, the usual 95 % level, since a
switch made on noise loses on new prompts as often as it wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .evaluate import deferral_curve, reference_column
from .progress import progress
from .quality import Estimator, HybridQuality
from .quality.base import serial_blas

__all__ = [
    "PredictorSpec", "Selection", "DEFAULT_GRID", "DEFAULT_FOLDS", "BASELINE", "select_predictor",
    "out_of_fold_quality",
]

#: Folds of the cross-validation.
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class PredictorSpec:
    """A quality predictor by registry name (`quality.PREDICTORS`) with hyper-parameters."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, kind: str, **params: Any) -> PredictorSpec:
        """`PredictorSpec.of("knn", k=200)`."""
        return cls(kind, tuple(sorted(params.items())))

    @property
    def kwargs(self) -> dict[str, Any]:
        """The hyper-parameters as keyword arguments of the predictor's class."""
        return dict(self.params)

    @property
    def label(self) -> str:
        """"knn(k=200)", "parametric(C=0.3)", ...: how tables name it."""
        args = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params)
        return f"{self.kind}({args})"


#: The spec kept unless another is measurably better (the default before `auto`).
BASELINE = PredictorSpec.of("knn", k=200)

#: The grid `auto` searches: each predictor around its published or cross-validated default.
DEFAULT_GRID: tuple[PredictorSpec, ...] = (
    *(PredictorSpec.of("knn", k=k) for k in (50, 100, 200, 400)),
    *(PredictorSpec.of("parametric", C=c) for c in (0.1, 0.3, 1.0)),
    *(PredictorSpec.of("hybrid", gamma=g) for g in (0.25, 0.5, 0.75)),
    *(PredictorSpec.of("cluster", n_clusters=n) for n in (8, 16, 32)),
    PredictorSpec.of("learned-map", n_clusters=16),
)


@dataclass(frozen=True)
class Selection:
    """The cross-validation's outcome: one row per spec, best mean AUDC first (its standard error
    over the folds; the paired difference to the baseline and its standard error; seconds to fit
    and predict all folds), and the spec chosen."""

    rows: list[dict[str, Any]]
    best: PredictorSpec
    baseline: PredictorSpec
    folds: int

    def table(self) -> str:
        """The rows as a fixed-width text table."""
        lines = [f"{'predictor':<28} {'CV AUDC':>8} {'± s.e.':>7} {'vs ' + self.baseline.label:>16} "
                 f"{'± s.e.':>7} {'seconds':>8}"]
        for row in self.rows:
            mark = "  ← chosen" if row["spec"] == self.best else ""
            lines.append(f"{row['spec'].label:<28} {row['audc']:>8.4f} {row['se']:>7.4f} {row['gain']:>+16.4f} "
                         f"{row['gain_se']:>7.4f} {row['seconds']:>8.2f}{mark}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The table as plain JSON-ready data."""
        return {"folds": self.folds, "chosen": self.best.label, "baseline": self.baseline.label,
                "rows": [{**row, "spec": row["spec"].label} for row in self.rows]}


def _folds(n: int, folds: int, seed: int, groups: Sequence[Any] | None = None) -> np.ndarray:
    """Each row's fold (seeded, balanced); rows of one group (the same prompt, recorded twice)
    share a fold, so that no prompt is scored by a predictor that was fitted on it."""
    if groups is None:
        return np.random.default_rng(seed).permutation(n) % folds
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    _, group = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return (np.random.default_rng(seed).permutation(group.max() + 1) % folds)[group]


def _check_folds(folds: Any, n: int) -> int:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    if n < 2 * folds:
        raise ValueError(f"cross-validation with {folds} folds needs at least {2 * folds} rows, got {n}")
    return int(folds)


def _key(predictor: Estimator) -> tuple:
    """A predictor's class and every hyper-parameter: equal keys predict alike."""
    return (type(predictor), *predictor.get_params().items())


def out_of_fold_quality(
    predictor: Estimator, X: np.ndarray, Y: np.ndarray, models: Sequence[str], *, folds: int = DEFAULT_FOLDS,
    seed: int = 0, groups: Sequence[Any] | None = None,
) -> np.ndarray:
    """(n, m) quality predictions for the rows of X, each by an unfitted copy of `predictor`
    fitted on the other folds: what the predictor says of prompts it has not seen.

    A predictor asked about its own training prompts is overconfident (a k-NN prompt is its own
    neighbour, a cluster's accuracy includes the prompt's label), so a batch plan or budget curve
    built on in-sample predictions expects larger quality gaps than live traffic shows.
    Rows of one `groups` value (e.g. the prompt text) share a fold. ValueError for fewer than 2
    folds or 2 rows per fold.
    """
    n = len(X)
    folds = _check_folds(folds, n)
    fold = _folds(n, folds, seed, groups)
    Q = np.empty((n, len(models)))
    for f in range(folds):
        fit, held = fold != f, fold == f
        # Estimator carries the hyper-parameters; every predictor given here is also a QualityPredictor.
        Q[held] = predictor.clone().fit(X[fit], Y[fit], list(models)).predict(X[held])  # type: ignore[attr-defined]
    return Q


def select_predictor(
    X: np.ndarray,
    Y: np.ndarray,
    cost: np.ndarray,
    models: Sequence[str],
    make: Callable[[PredictorSpec], Estimator],
    *,
    grid: Sequence[PredictorSpec] = DEFAULT_GRID,
    baseline: PredictorSpec = BASELINE,
    folds: int = DEFAULT_FOLDS,
    margin: float = 2.0,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    show_progress: bool = False,
) -> Selection:
    """Score each spec of `grid` by `folds`-fold cross-validated AUDC; the best that beats
    `baseline` by more than `margin` paired standard errors is chosen, else the baseline.

    X: (n, d) prompt embeddings; Y: (n, m) observed quality in [0, 1] (NaN = unlabelled); cost:
    (n, m) recorded USD per prompt and model; `make(spec)` builds an unfitted predictor. On each
    fold a predictor is fitted on the other folds, and the router scoring its predicted quality
    − λ·cost is swept over λ on the held-out rows; AUDC is the area under that curve, cost
    measured as a fraction of sending every held-out prompt to the model most accurate on the
    fitted rows. Rows of one `groups` value (pass the prompts: a prompt recorded twice) share a
    fold. A hybrid whose halves are in the grid is blended from their predictions rather than
    fitted again. Only with at least 2 measured folds can a spec displace the baseline. Raises
    ValueError for shapes that disagree, fewer than 2 folds, fewer than 2 rows per fold, a
    baseline outside the grid, a negative margin, or no fold that can be measured (no labels, or
    no positive recorded cost for its reference model).
    """
    X, Y, cost = np.asarray(X, float), np.asarray(Y, float), np.asarray(cost, float)
    n = len(Y)
    if X.shape[0] != n or Y.shape != cost.shape or Y.ndim != 2 or Y.shape[1] != len(models):
        raise ValueError(f"X {X.shape}, Y {Y.shape}, cost {cost.shape} and {len(models)} models disagree")
    folds = _check_folds(folds, n)
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number of standard errors >= 0, got {margin!r}")
    grid = list(dict.fromkeys(grid))
    if baseline not in grid:
        raise ValueError(f"the baseline {baseline.label} is not in the grid")
    # Hybrids last, so that their halves' predictions are there to blend.
    order = sorted(range(len(grid)), key=lambda i: grid[i].kind == "hybrid")
    fold = _folds(n, folds, seed, groups)
    with serial_blas():
        scores, seconds = _cross_validate(X, Y, cost, models, make, grid, order, fold, folds, show_progress)
    measured = ~np.isnan(scores[0])
    if not measured.any():
        raise ValueError("no fold has a reference model with a positive recorded cost to measure AUDC against")
    scores = scores[:, measured]
    k = scores.shape[1]
    audc, se = scores.mean(axis=1), scores.std(axis=1, ddof=1) / np.sqrt(k) if k > 1 else np.zeros(len(grid))
    base = grid.index(baseline)
    gain = scores - scores[base]
    gain_mean = gain.mean(axis=1)
    gain_se = gain.std(axis=1, ddof=1) / np.sqrt(k) if k > 1 else np.zeros(len(grid))
    ranked = np.argsort(-audc, kind="stable")
    # One measured fold has no spread to judge a difference by: the baseline stays.
    better = [i for i in ranked if k > 1 and gain_mean[i] > margin * gain_se[i] and gain_mean[i] > 0]
    best = grid[better[0]] if better else baseline
    rows = [{"spec": grid[i], "audc": float(audc[i]), "se": float(se[i]), "gain": float(gain_mean[i]),
             "gain_se": float(gain_se[i]), "seconds": float(seconds[i])} for i in ranked]
    return Selection(rows=rows, best=best, baseline=baseline, folds=int(k))


def _cross_validate(
    X: np.ndarray, Y: np.ndarray, cost: np.ndarray, models: Sequence[str], make: Callable[[PredictorSpec], Estimator],
    grid: list[PredictorSpec], order: list[int], fold: np.ndarray, folds: int, show_progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """AUDC per spec and fold ((specs, folds), NaN where a fold cannot be measured) and seconds per spec."""
    scores = np.full((len(grid), folds), np.nan)
    seconds = np.zeros(len(grid))
    held_cost = np.nan_to_num(cost, nan=np.inf)  # a model without a recorded cost is never chosen
    steps = [(f, i) for f in range(folds) for i in order]
    cache: dict[tuple, np.ndarray] = {}
    for f, i in progress(steps, label=f"choosing the predictor: {len(grid)} candidates × {folds} folds",
                         enabled=show_progress):
        fit, held = fold != f, fold == f
        if i == order[0]:
            cache.clear()  # a new fold
        if np.isnan(Y[fit]).all() or np.isnan(Y[held]).all():
            continue  # nothing to learn from, or nothing to score
        ref = reference_column(Y[fit])
        ref_cost = float(np.nansum(cost[held, ref]))
        if not ref_cost > 0:
            continue
        start = time.perf_counter()
        predictor = make(grid[i])
        q = cache.get(_key(predictor))
        if q is None and isinstance(predictor, HybridQuality):
            halves = [_key(half) for half in predictor.halves()]
            if all(h in cache for h in halves):
                q = HybridQuality.blend(cache[halves[0]], cache[halves[1]], predictor.gamma)
        if q is None:
            q = predictor.fit(X[fit], Y[fit], list(models)).predict(X[held])  # type: ignore[attr-defined]  # as above
        cache[_key(predictor)] = q
        seconds[i] += time.perf_counter() - start
        scores[i, f] = deferral_curve(q, held_cost[held], Y[held], cost[held], ref_cost).area()
    return scores, seconds
