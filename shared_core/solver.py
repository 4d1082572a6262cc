"""OmniRouter's batch problem, solved through its Lagrangian dual.

Budget mode: maximise Σᵢ qᵢⱼ₍ᵢ₎ subject to Σᵢ cᵢⱼ₍ᵢ₎ ≤ B, one model per prompt, optionally at most
Lⱼ prompts per model. Quality-target mode: minimise Σᵢ cᵢⱼ₍ᵢ₎ subject to mean qᵢⱼ₍ᵢ₎ ≥ α.

With only the budget (or the quality target) coupling the prompts, the dual function
D(λ) = λB + Σᵢ maxⱼ (qᵢⱼ − λcᵢⱼ) is convex and piecewise linear, and the spend of the inner argmax
falls in steps as λ grows. Each prompt's steps are the vertices of the upper envelope of its
lines qᵢⱼ − λcᵢⱼ; walking every envelope at once (vectorised) and sorting all steps by λ gives
the exact λ* where spend crosses B. Applying the steps in that order is also the greedy that
solves the LP relaxation (a multiple-choice knapsack): the LP optimum leaves at most one prompt
split between two models, and rounding that prompt to the cheaper model (the budget side) or the
better one (the target side) yields a feasible integral assignment within one prompt's quality
step of the LP bound.

Per-model capacities add one price μⱼ per model. The dual D(λ, μ) = λB + Σⱼ μⱼLⱼ +
Σᵢ maxⱼ (qᵢⱼ − λcᵢⱼ − μⱼ) then has m + 1 variables; smoothing its max into a log-sum-exp makes it
a smooth convex function that projected Newton steps minimise in a few dozen vectorised passes,
with the smoothing shrunk toward the exact dual. Each prompt then takes its best model at those
prices; prompts are moved out of over-full models (ties), the budget (or target) is restored
and the slack spent, greedily and always feasibly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import Infeasible

if TYPE_CHECKING:
    from .estimation import Estimate

__all__ = ["Solution", "BatchRouting", "Infeasible", "solve", "budget_curve", "capacity_counts"]

# Rows walked at once: bounds the temporary (rows × models) arrays to a few megabytes.
_CHUNK = 8192
# The largest float: a quality target's sum is held within it.
_FLOAT_MAX = float(np.finfo(np.float64).max)
# A quality target counts as met within float rounding of its sum (a budget is never exceeded).
_TARGET_SLACK = 1e-9
# Largest rows × capacity slots solved exactly when the repair heuristic finds no move.
_EXACT_LIMIT = 4_000_000
# With capacities: the smoothing temperatures (× the spread of values) the dual is solved at,
# down to where the smoothed and the LP optimum differ by well under 0.01 %, and Newton steps per level.
_TAUS = np.array([1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5])
_NEWTON_STEPS = 30
# Exact coordinate sweeps that sharpen the smoothed capacity prices before rounding.
_SHARPEN_SWEEPS = 5


@dataclass(frozen=True)
class Solution:
    """An integral assignment (column per prompt) and the dual prices that produced it.

    `lam` is the price of money (quality per USD) at which the budget or target binds: 0 when the
    budget does not bind, ∞ when even the cheapest assignment meets the target. `mu` are the
    capacity prices (quality per prompt), `cost`/`quality` the assignment's predicted totals and
    `bound` the LP relaxation's optimum (an upper bound on quality, a lower bound on cost).
    """

    choice: np.ndarray
    lam: float
    mu: np.ndarray
    cost: float
    quality: float
    bound: float

    @property
    def mean_quality(self) -> float:
        """Predicted mean quality of the assignment."""
        return self.quality / max(len(self.choice), 1)


@dataclass(frozen=True)
class BatchRouting:
    """What `Router.route_batch` returns: a model per prompt, the solution, and its predictions."""

    models: list[str]
    solution: Solution
    estimate: Estimate


def solve(
    quality: np.ndarray,
    cost: np.ndarray,
    *,
    budget: float | None = None,
    quality_target: float | None = None,
    capacity: np.ndarray | None = None,
    feasible: np.ndarray | None = None,
) -> Solution:
    """One model per row: best quality within `budget`, or cheapest with mean quality ≥ `quality_target`.

    `quality` (n, m) predicted quality in [0, 1] and `cost` (n, m) predicted USD, a row per prompt
    and a column per model; `budget` in USD for the whole batch, `quality_target` a mean quality
    (exactly one of the two). `capacity` (m,) caps how many rows each column may take; `feasible`
    (n, m) masks pairs out. Without capacities the integral assignment is within one row's step
    of the LP bound. The problem and its dual are OmniRouter's (Mei et al., 2025; see the module
    docstring). Raises Infeasible when nothing meets the constraints, ValueError for shapes or
    values that make no problem (NaN, negative cost, both or neither of budget and target).
    """
    q, c, ok = _validate(quality, cost, feasible)
    if (budget is None) == (quality_target is None):
        raise ValueError("give exactly one of budget= (USD) or quality_target= (mean quality)")
    if budget is not None and not (np.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0, got {budget}")
    if quality_target is not None and not np.isfinite(quality_target):
        raise ValueError(f"quality_target must be finite, got {quality_target}")
    caps = _check_capacity(capacity, q.shape)
    # A mean target near the float limit overflows as a sum: held at the largest float, it stays
    # unreachable (or, negative, met by anything) instead of turning the comparisons into NaN.
    target = None if quality_target is None else min(max(float(quality_target) * len(q), -_FLOAT_MAX), _FLOAT_MAX)
    if caps is not None:
        return _capacitated(q, c, ok, caps, None if budget is None else float(budget), target)
    start, steps = _envelope_steps(q, c, ok)
    if budget is not None:
        return _greedy_budget(q, c, start, steps, float(budget))
    best = float(q[np.arange(len(q)), start].sum())
    # target is set whenever budget is None (exactly one of the two is given).
    if best < target - _TARGET_SLACK * max(1.0, abs(target)):  # type: ignore[operator, arg-type]
        raise Infeasible(f"mean quality {quality_target:.6g} is above the best reachable {best / len(q):.6g}")
    return _greedy_target(q, c, start, steps, target)  # type: ignore[arg-type]


def budget_curve(
    quality: np.ndarray, cost: np.ndarray, feasible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every step of the budget-mode solution: (total spend, λ) pairs, spend falling as λ rises.

    The first pair is (spend at λ = 0, 0); a budget B is optimally priced by the λ of the first
    pair whose spend is ≤ B. The online pacer warm-starts from this curve.
    """
    q, c, ok = _validate(quality, cost, feasible)
    start, (rows, to, lam, dc, dq) = _envelope_steps(q, c, ok)
    spend0 = float(c[np.arange(len(q)), start].sum())
    return np.concatenate([[spend0], spend0 - np.cumsum(dc)]), np.concatenate([[0.0], lam])


def capacity_counts(capacities: Mapping[str, float | int] | None, names: Sequence[str], n: int) -> np.ndarray | None:
    """Per-column row limits from {name: share in (0, 1] (float) or count (int)}; None when empty."""
    if not capacities:
        return None
    unknown = [k for k in capacities if k not in names]
    if unknown:
        raise ValueError(f"capacities name unknown candidates {unknown}; candidates are {list(names)}")
    caps = np.full(len(names), n, dtype=np.int64)
    for name, limit in capacities.items():
        j = list(names).index(name)
        if isinstance(limit, (bool, np.bool_)):
            raise ValueError(f"capacity of {name!r} must be a share (float) or a count (int), got {limit!r}")
        if isinstance(limit, (int, np.integer)):
            if limit < 0:
                raise ValueError(f"capacity of {name!r} must be a count >= 0, got {limit}")
            caps[j] = min(int(limit), n)
        else:
            share = float(limit)
            if not 0.0 <= share <= 1.0:
                raise ValueError(
                    f"capacity share of {name!r} must be in [0, 1] (use an int for a count), got {limit!r}"
                )
            caps[j] = int(np.floor(share * n + 1e-9))
    return caps


# ---------------------------------------------------------------------------------- checks
def _validate(
    quality: np.ndarray, cost: np.ndarray, feasible: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if q.ndim != 2 or q.shape != c.shape:
        raise ValueError(f"quality and cost must be 2-D arrays of one shape, got {q.shape} and {c.shape}")
    if q.shape[1] == 0:
        raise ValueError("there must be at least one model column")
    ok = np.ones(q.shape, dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    if ok.shape != q.shape:
        raise ValueError(f"feasible must have shape {q.shape}, got {ok.shape}")
    if not np.isfinite(q[ok]).all():
        raise ValueError("predicted quality must be finite wherever a pair is feasible")
    if not (np.isfinite(c[ok]).all() and (c[ok] >= 0).all()):
        raise ValueError("predicted cost must be finite and >= 0 wherever a pair is feasible")
    stuck = np.flatnonzero(~ok.any(axis=1))
    if stuck.size:
        raise Infeasible(f"rows {stuck[:10].tolist()} have no feasible model")
    return np.where(ok, q, 0.0), np.where(ok, c, 0.0), ok


def _check_capacity(capacity: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if capacity is None:
        return None
    caps = np.asarray(capacity)
    if caps.shape != (shape[1],) or not np.issubdtype(caps.dtype, np.number) or (caps < 0).any():
        raise ValueError(f"capacity must be {shape[1]} counts >= 0, got {capacity!r}")
    caps = np.minimum(np.floor(caps), shape[0]).astype(np.int64)
    if caps.sum() < shape[0]:
        raise Infeasible(f"capacities admit {int(caps.sum())} rows but there are {shape[0]}")
    return None if (caps >= shape[0]).all() else caps


# ------------------------------------------------------------------- exact single constraint
Steps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _envelope_steps(q: np.ndarray, c: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, Steps]:
    """Each row's choice at λ = 0 and every envelope step (row, to, λ, cost saved, quality lost), by λ."""
    n = len(q)
    start = np.empty(n, dtype=np.int64)
    parts: list[Steps] = []
    for lo in range(0, n, _CHUNK):
        s, steps = _walk(q[lo:lo + _CHUNK], c[lo:lo + _CHUNK], ok[lo:lo + _CHUNK])
        start[lo:lo + _CHUNK] = s
        parts.append((steps[0] + lo, *steps[1:]))
    rows, to, lam, dc, dq = (np.concatenate(x) for x in zip(*parts, strict=False))
    order = np.argsort(lam, kind="stable")  # stable: one row's steps stay in envelope order
    return start, (rows[order], to[order], lam[order], dc[order], dq[order])


def _walk(q: np.ndarray, c: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, Steps]:
    """Walk the upper envelope of qᵢⱼ − λcᵢⱼ from λ = 0 up, for all rows of a chunk together."""
    qm = np.where(ok, q, -np.inf)
    cm = np.where(ok, c, np.inf)
    best = qm.max(axis=1, keepdims=True)
    start = np.where(qm == best, cm, np.inf).argmin(axis=1)  # exact ties: the cheaper model
    cur, lam_cur = start.copy(), np.zeros(len(q))
    active = np.arange(len(q))
    out: list[Steps] = []
    while active.size:
        j = cur[active]
        qa, ca = qm[active], cm[active]
        r = np.arange(len(active))
        qj, cj = qa[r, j], ca[r, j]
        saved = cj[:, None] - ca
        cheaper = saved > 0
        lost = qj[:, None] - qa
        # The line of a cheaper model k overtakes j's at λ = (qⱼ − qₖ) / (cⱼ − cₖ).
        lam = np.full(qa.shape, np.inf)
        np.divide(lost, saved, out=lam, where=cheaper)
        lam = np.maximum(lam, lam_cur[active, None])  # rounding must not step backwards
        lmin = lam.min(axis=1)
        moving = np.isfinite(lmin)
        k = np.where(lam == lmin[:, None], ca, np.inf).argmin(axis=1)  # ties: jump to the cheapest
        m_rows, m_k = active[moving], k[moving]
        out.append((
            m_rows, m_k, lmin[moving],
            cj[moving] - c[m_rows, m_k], qj[moving] - q[m_rows, m_k],
        ))
        cur[m_rows], lam_cur[m_rows] = m_k, lmin[moving]
        active = m_rows
    if not out:
        empty = np.empty(0)
        return start, (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), empty, empty, empty)
    rows, to, lam_s, dc, dq = (np.concatenate(x) for x in zip(*out, strict=False))
    return start, (rows, to, lam_s, dc, dq)


def _apply(start: np.ndarray, rows: np.ndarray, to: np.ndarray, applied: np.ndarray) -> np.ndarray:
    """The assignment after the `applied` steps (each row's applied steps are a prefix of its chain)."""
    choice = start.copy()
    r, t = rows[applied][::-1], to[applied][::-1]
    _, last = np.unique(r, return_index=True)  # first in reversed order = the row's last step
    choice[r[last]] = t[last]
    return choice


def _neighbours(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each step, the index of the same row's previous and next step (-1 / len when none)."""
    n = len(rows)
    order = np.lexsort((np.arange(n), rows))
    same = rows[order][1:] == rows[order][:-1]
    prv, nxt = np.full(n, -1), np.full(n, n)
    prv[order[1:][same]] = order[:-1][same]
    nxt[order[:-1][same]] = order[1:][same]
    return prv, nxt


def _totals(q: np.ndarray, c: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    r = np.arange(len(choice))
    return float(q[r, choice].sum()), float(c[r, choice].sum())


def _greedy_budget(q: np.ndarray, c: np.ndarray, start: np.ndarray, steps: Steps, budget: float) -> Solution:
    rows, to, lam, dc, dq = steps
    q0, s0 = _totals(q, c, start)
    mu = np.zeros(q.shape[1])
    if s0 <= budget:
        return Solution(start, 0.0, mu, s0, q0, q0)
    spend = s0 - np.cumsum(dc)
    k = int(np.searchsorted(-spend, -budget))  # the step that brings spend ≤ budget
    if k == len(spend):
        cheapest = spend[-1] if len(spend) else s0
        raise Infeasible(f"the budget of {budget:.6g} USD is below the cheapest assignment ({cheapest:.6g} USD)")
    before = s0 if k == 0 else spend[k - 1]
    # The LP splits row rows[k] between its two models; the integral answer takes the cheaper one.
    bound = q0 - (dq[:k].sum() + (before - budget) / dc[k] * dq[k])
    applied = np.arange(len(rows)) <= k
    # Spend what rounding left over by undoing the most valuable steps that still fit: a step
    # can be undone once its row's later steps are (the row then moves back up its envelope).
    slack = budget - float(spend[k])
    _, nxt = _neighbours(rows)
    for i in np.flatnonzero(applied & (dc <= slack) & (dq > 0))[::-1]:
        if dc[i] <= slack and not (nxt[i] <= k and applied[nxt[i]]):
            applied[i] = False
            slack -= dc[i]
    choice = _apply(start, rows, to, applied)
    quality, spent = _totals(q, c, choice)
    while spent > budget and k + 1 < len(rows):  # the running sums drifted from the row sums
        k += 1
        choice = _apply(start, rows, to, np.arange(len(rows)) <= k)
        quality, spent = _totals(q, c, choice)
    return Solution(choice, float(lam[k]), mu, spent, quality, float(bound))


def _greedy_target(q: np.ndarray, c: np.ndarray, start: np.ndarray, steps: Steps, target: float) -> Solution:
    """Apply steps while quality stays ≥ target, then the later steps that still fit the surplus."""
    rows, to, lam, dc, dq = steps
    q0, s0 = _totals(q, c, start)
    mu = np.zeros(q.shape[1])
    goal = target + 1e-12 * abs(target)  # float sums may sit an ulp below: aim a hair above
    if q0 < goal:  # the best assignment is within float rounding of the target
        return Solution(start, 0.0, mu, s0, q0, s0)
    kept = q0 - np.cumsum(dq)
    short = np.flatnonzero(kept < goal)
    if not short.size:  # even the cheapest assignment meets the target: price money out of every choice
        choice = _apply(start, rows, to, np.ones(len(rows), dtype=bool))
        quality, spent = _totals(q, c, choice)
        return Solution(choice, float("inf"), mu, spent, quality, spent)
    k = int(short[0])  # the first step that would drop below the target
    applied = np.arange(len(rows)) < k
    surplus = (q0 if k == 0 else float(kept[k - 1])) - goal
    # The LP takes the fraction of step k that lands exactly on the target.
    bound = s0 - dc[:k].sum() - (surplus / dq[k]) * dc[k]
    # Step k does not fit whole; later steps that do are still worth taking (a row's step
    # needs its earlier ones taken).
    prv, _ = _neighbours(rows)
    for i in np.flatnonzero((np.arange(len(rows)) > k) & (dq <= surplus)):
        if dq[i] <= surplus and (prv[i] < 0 or applied[prv[i]]):
            applied[i] = True
            surplus -= dq[i]
    choice = _apply(start, rows, to, applied)
    quality, spent = _totals(q, c, choice)
    return Solution(choice, float(lam[k]), mu, spent, quality, float(bound))


# ----------------------------------------------------------------------- capacities
def _capacitated(q: np.ndarray, c: np.ndarray, ok: np.ndarray, caps: np.ndarray,
                 budget: float | None, target: float | None) -> Solution:
    """Both modes with per-column capacities: dual prices by smoothed Newton, then a repaired primal.

    Budget mode maximises Σ q subject to Σ c ≤ B; target mode maximises Σ −c subject to
    Σ −q ≤ −T. Either way the dual prices (y₀ on the coupling constraint, μ on the columns)
    come from `_dual_prices` (then sharpened for the final y₀); the primal is each row's best
    column at those prices, the rows that lose least moved out of over-full columns, pushed
    within the budget (or up to the target) if needed and given what slack is left.
    """
    n = len(q)
    ok = ok & (caps > 0)
    if not ok.any(axis=1).all():
        raise Infeasible("some rows have no feasible model with capacity above 0")
    r = np.arange(n)
    if budget is not None:
        cheapest = float(np.where(ok, c, np.inf).min(axis=1).sum())
        if cheapest > budget:
            raise Infeasible(f"the budget of {budget:.6g} USD is below the cheapest assignment ({cheapest:.6g} USD)")
        value, weight, rhs = q, c, budget
    else:
        value, weight, rhs = -c, -q, -target  # type: ignore[operator]
    y0, mu = _dual_prices(np.where(ok, value, -np.inf), weight, rhs, caps)
    v = np.where(ok, value - y0 * weight, -np.inf)
    # Weak duality: y₀·rhs + Σ μⱼLⱼ + Σᵢ maxⱼ (valueᵢⱼ − y₀ weightᵢⱼ − μⱼ) bounds every assignment.
    dual = y0 * rhs + float(mu @ caps) + float((v - mu).max(axis=1).sum())
    choice = _within_capacity(v - _capacity_prices(v, caps, mu), caps)
    # Restoring aims at the constraint itself; filling leaves a hair of it, so that float sums
    # of the moves can never tip the assignment over.
    if budget is not None:
        choice = _restore(q, c, ok, caps, choice, budget, None)
        choice = _fill(caps, choice, np.where(ok, q - q[r, choice][:, None], -np.inf),
                       c - c[r, choice][:, None], budget * (1 - 1e-12) - c[r, choice].sum())
        lam, prices, bound = y0, mu, dual
    else:
        choice = _restore(q, c, ok, caps, choice, None, target)
        surplus = q[r, choice].sum() - target - 1e-12 * abs(target)  # type: ignore[operator, arg-type]  # target mode
        saved = np.where(ok, c[r, choice][:, None] - c, -np.inf)
        choice = _fill(caps, choice, saved, q[r, choice][:, None] - q, surplus)
        # y₀ is USD per unit of quality: λ is its inverse, and μ is read in quality units.
        lam = 1.0 / y0 if y0 > 0 else float("inf")
        prices, bound = (mu / y0 if y0 > 0 else mu), -dual
    quality, spent = _totals(q, c, choice)
    return Solution(choice, float(lam), prices, spent, quality, float(bound))


def _dual_prices(value: np.ndarray, weight: np.ndarray, rhs: float, caps: np.ndarray) -> tuple[float, np.ndarray]:
    """Prices (y₀ ≥ 0, μ ≥ 0) of max Σ value s.t. Σ weight ≤ rhs and column counts ≤ caps.

    Minimises the entropy-smoothed dual y₀·rhs + μ·caps + τ Σᵢ log Σⱼ exp((valueᵢⱼ − y₀weightᵢⱼ − μⱼ)/τ),
    a smooth convex function of at most m + 1 variables, by projected Newton steps, with τ
    shrinking toward 0 (the LP dual) and each level warm-started from the last.
    """
    n, m = value.shape
    finite = value[np.isfinite(value)]
    spread = float(finite.max() - finite.min()) + 1e-12
    free_cols = np.concatenate([[True], caps < n])  # an unlimited column's price stays 0
    b = np.concatenate([[rhs], caps.astype(float)])
    y = np.zeros(m + 1)
    for tau in spread * _TAUS:
        f, g, h = _smoothed_dual(value, weight, b, y, tau)
        for _ in range(_NEWTON_STEPS):
            free = free_cols & ~((y <= 0) & (g > 0))  # bounds that hold y at 0
            if not free.any():
                break
            hf = h[np.ix_(free, free)]
            # A price nobody's choice depends on has no curvature: the tiny ridge sends it far,
            # and the projection plus line search bring it back to where the bound holds it.
            ridge = 1e-9 * float(np.diag(hf).max()) + 1e-300
            if not (np.isfinite(hf).all() and np.isfinite(g).all()):
                break  # prices beyond float range: the rounding below decides what is feasible
            step = np.zeros(m + 1)
            step[free] = np.linalg.lstsq(hf + ridge * np.eye(len(hf)), -g[free], rcond=None)[0]
            t, improved = 1.0, False
            while t > 1e-8:
                trial = np.maximum(y + t * step, 0.0)
                f_new, g_new, h_new = _smoothed_dual(value, weight, b, trial, tau)
                if np.isfinite(f_new) and f_new <= f + 1e-4 * float(g @ (trial - y)):
                    improved = True
                    break
                t *= 0.5
            if not improved:
                break
            done = f - f_new <= 1e-12 * (abs(f) + 1.0)
            y, f, g, h = trial, f_new, g_new, h_new
            if done:
                break
    return float(y[0]), y[1:]


def _smoothed_dual(value: np.ndarray, weight: np.ndarray, b: np.ndarray, y: np.ndarray,
                   tau: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The smoothed dual at y = (y₀, μ): value, gradient and Hessian (non-finite once y leaves float range)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = (value - y[0] * weight - y[1:]) / tau
        top = z.max(axis=1, keepdims=True)
        # Below e⁻⁶⁰ a term is nothing next to the row's best (and exp's subnormals are slow).
        e = np.exp(np.maximum(z - top, -60.0))
        e[~np.isfinite(value)] = 0.0
        total = e.sum(axis=1, keepdims=True)
        p = e / total
        f = float(y @ b + tau * (np.log(total) + top).sum())
        w = np.where(p > 0, weight, 0.0)  # infeasible pairs carry no weight (and no NaN from −inf·0)
        pw = p * w
        s = pw.sum(axis=1)
        g = b - np.concatenate([[pw.sum()], p.sum(axis=0)])
        h = np.empty((len(b), len(b)))
        h[0, 0] = float((pw * w).sum() - s @ s)
        h[0, 1:] = h[1:, 0] = pw.sum(axis=0) - p.T @ s
        h[1:, 1:] = np.diag(p.sum(axis=0)) - p.T @ p
        return f, g, h / tau


def _capacity_prices(v: np.ndarray, caps: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Sharpen prices μ of the capacities for max Σ v (column j ≤ caps[j] rows) by exact coordinate descent.

    On the dual Σⱼ μⱼLⱼ + Σᵢ maxⱼ (vᵢⱼ − μⱼ), column j's best price with the others fixed is the
    one at which exactly caps[j] rows prefer it (0 when fewer do); from the smoothed prices a
    few sweeps settle it, so that each row's best column respects the capacities but for ties.
    """
    n = len(v)
    mu = mu.copy()
    finite = v[np.isfinite(v)]
    tol = 1e-12 * (float(finite.max() - finite.min()) + 1e-12)
    for _ in range(_SHARPEN_SWEEPS):
        moved = 0.0
        for j in np.flatnonzero(caps < n):
            net = v - mu
            net[:, j] = -np.inf
            # How much more row i gains in column j than in its best other column (before μⱼ).
            edge = np.where(np.isfinite(v[:, j]), v[:, j] - net.max(axis=1), -np.inf)
            k = n - caps[j] - 1
            price = max(0.0, float(np.partition(edge, k)[k]))
            if not np.isfinite(price):
                raise Infeasible(f"more than {caps[j]} rows can only take column {j}: the capacities cannot be met")
            moved, mu[j] = max(moved, abs(price - mu[j])), price
        if moved <= tol:
            break
    return mu


def _within_capacity(net: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Each row's best column by `net`, over-full columns emptied into columns with room at least loss.

    A row moves directly when a column with room takes it; otherwise along the cheapest chain of
    moves through full columns (`_best_chain`). Infeasible when no chain reaches room.
    """
    choice = net.argmax(axis=1)
    counts = np.bincount(choice, minlength=len(caps))
    r = np.arange(len(choice))
    while (over := np.flatnonzero(counts > caps)).size:
        j = int(over[0])
        rows = np.flatnonzero(choice == j)
        room = counts < caps
        alt = np.where(room, net[rows], -np.inf)
        alt[:, j] = -np.inf
        movable = np.flatnonzero(np.isfinite(alt.max(axis=1)))
        if movable.size:
            loss = net[rows[movable], j] - alt[movable].max(axis=1)
            for k in movable[np.argsort(loss, kind="stable")]:
                if counts[j] <= caps[j]:
                    break
                to = int(np.argmax(np.where(counts < caps, alt[k], -np.inf)))
                if not np.isfinite(alt[k, to]) or counts[to] >= caps[to]:
                    continue
                choice[rows[k]], counts[j], counts[to] = to, counts[j] - 1, counts[to] + 1
            continue
        gain = np.where(np.isfinite(net), net - net[r, choice][:, None], -np.inf)
        moves = _best_chain(gain, choice, room, start=j)
        if not moves:
            raise Infeasible("the feasible pairs cannot meet the capacities")
        for i, to in moves:
            counts[choice[i]] -= 1
            counts[to] += 1
            choice[i] = to
    return choice


def _restore(q: np.ndarray, c: np.ndarray, ok: np.ndarray, caps: np.ndarray, choice: np.ndarray,
             budget: float | None, target: float | None) -> np.ndarray:
    """Move rows until the assignment is within the budget (or meets the target), capacities kept.

    Each move removes some excess (overspend, or quality short of the target) at some price
    (quality given up, or money spent). A move into a full column bumps one of its rows into a
    column with room or into the column the mover leaves (a swap). Moves go best price per unit
    fixed first, but once a single move covers what is left, the cheapest such move ends it.
    """
    choice = choice.copy()
    n, m = q.shape
    r = np.arange(n)
    while True:
        qc, cc = q[r, choice], c[r, choice]
        if budget is not None:
            excess, fix, price = cc.sum() - budget, cc[:, None] - c, qc[:, None] - q
        else:
            excess, fix, price = target - qc.sum(), q - qc[:, None], c - cc[:, None]  # type: ignore[operator]
        if excess <= (0.0 if budget is not None else _TARGET_SLACK * max(1.0, abs(target))):  # type: ignore[arg-type]
            return choice
        fix = np.where(ok, fix, -np.inf)
        fix[r, choice] = -np.inf
        room = np.bincount(choice, minlength=m) < caps
        # bump[j, s]: the cheapest way (worsening nothing) to move a row out of full column j into
        # a column with room or into s, the column the mover vacates.
        b_row, b_to = np.full((m, m), -1), np.full((m, m), -1)
        b_fix, b_price = np.zeros((m, m)), np.full((m, m), np.inf)
        for j in np.flatnonzero(~room):
            rows = np.flatnonzero(choice == j)
            if not rows.size:
                continue
            f = np.where(fix[rows] >= 0, fix[rows], -np.inf)
            p = np.where(np.isfinite(f), price[rows], np.inf)
            for src in range(m):
                if src == j:
                    continue
                allowed = room.copy()
                allowed[src] = True
                pa = np.where(allowed, p, np.inf)
                b, to = np.unravel_index(np.argmin(pa), pa.shape)
                if np.isfinite(pa[b, to]):
                    b_row[j, src], b_to[j, src], b_fix[j, src], b_price[j, src] = rows[b], to, f[b, to], pa[b, to]
        extra_fix = np.where(room[None, :], 0.0, b_fix[:, choice].T)
        extra_price = np.where(room[None, :], 0.0, b_price[:, choice].T)
        total_fix = fix + extra_fix
        total_fix[~(room[None, :] | (b_row[:, choice].T >= 0)) | (b_row[:, choice].T == r[:, None])] = -np.inf
        rows, cols = np.nonzero(total_fix > 0)
        if not rows.size:  # only a longer chain of moves (or a cycle) can still fix anything
            moves = _best_chain(fix, choice, room)
            if not moves:
                # The moves above are a heuristic; whether any assignment fits is an exact question.
                return _least_within(c if budget is not None else -q, ok, caps, excess_left=lambda ch: (
                    c[r, ch].sum() - budget if budget is not None
                    else target - q[r, ch].sum() - _TARGET_SLACK * max(1.0, abs(target))))  # type: ignore[operator, arg-type]
            for mover, dest in moves:
                choice[mover] = dest
            continue
        f, p = total_fix[rows, cols], (price + extra_price)[rows, cols]
        covers = f >= excess
        k = int(np.flatnonzero(covers)[np.argmin(p[covers])]) if covers.any() else int(np.argmin(p / f))
        i, j = rows[k], cols[k]
        if not room[j]:
            choice[b_row[j, choice[i]]] = b_to[j, choice[i]]
        choice[i] = j


def _least_within(weight: np.ndarray, ok: np.ndarray, caps: np.ndarray, excess_left) -> np.ndarray:
    """The assignment with the least total weight within the capacities (an exact min-cost
    assignment over each column's slots), when it meets the constraint; Infeasible otherwise, and
    for instances too large to solve exactly here (n × slots over _EXACT_LIMIT)."""
    from scipy.optimize import linear_sum_assignment

    n, m = weight.shape
    slots = np.minimum(caps, n).astype(np.int64)
    if n * int(slots.sum()) > _EXACT_LIMIT:
        raise Infeasible("no assignment within the capacities meets the budget (or the quality target) was found")
    cols = np.repeat(np.arange(m), slots)
    big = float(np.abs(np.where(ok, weight, 0.0)).sum()) * 2 + 1.0  # dearer than any feasible assignment
    cost = np.where(ok[:, cols], weight[:, cols], big)
    rows, picked = linear_sum_assignment(cost)
    choice = np.empty(n, dtype=np.int64)
    choice[rows] = cols[picked]
    if (cost[rows, picked] >= big).any() or excess_left(choice) > 0:
        raise Infeasible("no assignment within the capacities meets the budget (or the quality target)")
    return choice


def _best_chain(
    fix: np.ndarray, choice: np.ndarray, room: np.ndarray, start: int | None = None
) -> list[tuple[int, int]]:
    """The moves of the chain of columns (ending in one with room, or closing a cycle) that fixes most.

    Edge a → b moves the row of column a that fixes most by going to b; the best chain is a
    longest path over the m columns (Bellman–Ford), or a cycle when one keeps improving it.
    With `start`, the chain must leave that column and end in room, whatever it fixes.
    """
    m = len(room)
    gain, mover = np.full((m, m), -np.inf), np.full((m, m), -1)
    for a in range(m):
        rows = np.flatnonzero(choice == a)
        if rows.size:
            best = fix[rows].argmax(axis=0)
            gain[a], mover[a] = fix[rows][best, np.arange(m)], rows[best]
    np.fill_diagonal(gain, -np.inf)
    # value[a]: the most a chain starting with a row leaving column a fixes.
    value, nxt = np.full(m, -np.inf), np.full(m, -1)
    for _ in range(m + 1):
        through = gain + np.where(room, 0.0, value)[None, :]
        better = through.max(axis=1) > value + 1e-15
        if not better.any():
            break
        nxt[better] = through.argmax(axis=1)[better]
        value[better] = through.max(axis=1)[better]
    if start is None:
        start = int(np.argmax(value))
        if not value[start] > 0:
            return []
    elif not np.isfinite(value[start]):
        return []
    moves, seen, a = [], [], start
    while a not in seen:  # follow the chain until a column with room, or round a cycle
        seen.append(a)
        b = int(nxt[a])
        moves.append((int(mover[a, b]), b))
        if room[b]:
            return moves
        a = b
    # The cycle alone: each of its columns gives and takes one row (useless when a column must shed one).
    return moves[seen.index(a):] if start is None else []


def _fill(caps: np.ndarray, choice: np.ndarray, gain: np.ndarray, use: np.ndarray, slack: float) -> np.ndarray:
    """Spend the slack rounding left: move rows to other columns, best gain per use first.

    gain[i, j] / use[i, j] is what moving row i to column j gains / consumes of the slack (a
    negative use frees some); each row moves at most once and capacities keep holding.
    """
    choice = choice.copy()
    counts = np.bincount(choice, minlength=len(caps))
    rows, cols = np.nonzero((gain > 0) & (use <= slack))
    g, u = gain[rows, cols], use[rows, cols]
    ratio = np.where(u > 0, g / np.where(u > 0, u, 1.0), np.inf)
    moved = np.zeros(len(choice), dtype=bool)
    for k in np.argsort(-ratio, kind="stable"):
        i, j = rows[k], cols[k]
        if moved[i] or counts[j] >= caps[j] or u[k] > slack:
            continue
        counts[choice[i]] -= 1
        counts[j] += 1
        choice[i], moved[i], slack = j, True, slack - u[k]
    return choice
