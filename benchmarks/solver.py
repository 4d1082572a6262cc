"""The batch dual solver against HiGHS's LP (scipy.optimize.linprog): optimality gap and speed.

Instances: n prompts × m models where quality and price both rise with a model's tier (plus
per-prompt noise and prompt length), the shape of real routing data; a budget of 30 % of the
way from the cheapest to the dearest assignment, a mean-quality target of 0.6, and capacities
that make the three best models scarce. The LP optimum is HiGHS's (interior point, its fastest
method here; dual simplex, the default, is timed on the small instance). Gap = how far the
solver's integral assignment is from the LP optimum, relative to it.

Run: python benchmarks/solver.py [--sizes 10000x11,100000x30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import print_table, write_json
from scipy import sparse
from scipy.optimize import linprog

from shared_core.solver import solve


def instance(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiered qualities and prices, like a routing dataset's predictions."""
    rng = np.random.default_rng(seed)
    tier = np.sort(rng.random(m))
    q = np.clip(tier + 0.25 * rng.standard_normal((n, m)), 0, 1)
    c = np.exp(4 * tier) * rng.uniform(0.2, 2.0, (n, 1)) * rng.uniform(0.8, 1.2, (n, m)) * 1e-3
    return q, c


def highs(q: np.ndarray, c: np.ndarray, method: str, *, budget=None, target=None, caps=None) -> tuple[float, float]:
    """(LP optimum, seconds): max quality within budget, or min cost at a mean-quality target."""
    n, m = q.shape
    rows, rhs = [], []
    if budget is not None:
        objective = -q.ravel()
        rows.append(sparse.csr_matrix(c.reshape(1, -1)))
        rhs.append(budget)
    else:
        objective = c.ravel()
        rows.append(sparse.csr_matrix(-q.reshape(1, -1)))
        rhs.append(-target * n)
    if caps is not None:
        rows.append(sparse.kron(np.ones((1, n)), sparse.eye(m), format="csr"))
        rhs.extend(caps)
    start = time.perf_counter()
    res = linprog(objective, A_ub=sparse.vstack(rows, format="csr"), b_ub=np.asarray(rhs, float),
                  A_eq=sparse.kron(sparse.eye(n), np.ones((1, m)), format="csr"), b_eq=np.ones(n),
                  bounds=(0, 1), method=method)
    seconds = time.perf_counter() - start
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    return (-res.fun if budget is not None else res.fun), seconds


def ours(q, c, **kwargs) -> tuple[object, float]:
    """The solver's solution and its best wall time of three runs."""
    best, sol = np.inf, None
    for _ in range(3):
        start = time.perf_counter()
        sol = solve(q, c, **kwargs)
        best = min(best, time.perf_counter() - start)
    return sol, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000x11,100000x30")
    args = parser.parse_args()
    rows, results = [], []
    for size in args.sizes.split(","):
        n, m = (int(x) for x in size.split("x"))
        q, c = instance(n, m)
        lo, hi = c.min(axis=1).sum(), c.max(axis=1).sum()
        caps = np.full(m, n)
        caps[-3:] = n // (4 * m)  # the three best models take at most 1/(4m) of the prompts each
        cases = [
            ("budget", {"budget": lo + 0.3 * (hi - lo)}),
            ("quality target", {"quality_target": 0.6}),
            ("budget + capacities", {"budget": lo + 0.3 * (hi - lo), "capacity": caps}),
        ]
        methods = ["highs-ipm"] + (["highs"] if n * m <= 200_000 else [])
        for label, kwargs in cases:
            sol, t_ours = ours(q, c, **kwargs)
            budget, target = kwargs.get("budget"), kwargs.get("quality_target")
            objective = sol.quality if budget is not None else sol.cost
            for method in methods:
                lp, t_lp = highs(q, c, method, budget=budget, target=target, caps=kwargs.get("capacity"))
                gap = (lp - objective) / lp if budget is not None else (objective - lp) / lp
                rows.append([f"{n:,}×{m}", label, method, f"{t_ours * 1e3:.1f}", f"{t_lp * 1e3:.0f}",
                             f"{t_lp / t_ours:.0f}×", f"{gap:.2e}", f"{abs(sol.bound - lp) / lp:.1e}"])
                results.append({"n": n, "m": m, "case": label, "highs_method": method, "solver_s": t_ours,
                                "highs_s": t_lp, "speedup": t_lp / t_ours, "gap_to_lp": gap,
                                "solver_bound_vs_lp": (sol.bound - lp) / lp})
            print(f"{n}x{m} {label}: solver {t_ours:.3f}s", flush=True)
    print_table("Dual solver vs HiGHS LP (integral assignment vs the LP optimum)",
                ["size", "problem", "HiGHS", "solver ms", "HiGHS ms", "speed-up", "gap to LP", "|bound − LP|"],
                rows)
    write_json("solver", {"instances": results})


if __name__ == "__main__":
    main()
