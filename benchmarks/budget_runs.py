"""Budget runs on the RouterBench subset's test split: batch solver, online pacer, fixed-λ router.

For each budget (10 %, 25 %, 50 % of sending every test prompt to the reference model):

- batch: the dual solver routes the whole test set at once on predicted quality and cost;
- online: the test prompts one at a time, grouped by task (the adversarial order), through one
  session paced over the test set's length, each settled with the dataset's actual cost;
- fixed λ: a per-query router (argmax q̂ − λĉ) whose λ is calibrated on the training split
  (RouteLLM-style) to spend the budget.

A calibrated λ lands near, not on, its target spend on the test set, so runs are compared with
fixed-λ routers at the same realised spend: "fixed@same" is the fixed-λ router that spends the
most on the test set without spending more than the run (the closest point of the per-query
router's deferral curve); "best fixed" is the most accurate one within that spend (the curve's
a(x), a hindsight choice of λ).

Checks: batch spend ≤ 102 % of budget; online spend ≤ budget + one request's cost and ≥ 95 %;
each run's accuracy ≥ fixed@same.

Run: python benchmarks/budget_runs.py [--predictor NAME] [--order grouped]
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import DATA, print_table, write_json
from shared_core.data import load_dataset
from shared_core.evaluate import (
    ORDERS, BudgetRun, batch_run, calibrate_lambda, deferral_curve, fixed_lambda_run, online_run, reference_column,
)
from shared_core.fitting import DEFAULT_PREDICTOR, fit_router

FRACTIONS = (0.10, 0.25, 0.50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", default=DEFAULT_PREDICTOR)
    parser.add_argument("--order", choices=ORDERS, default="grouped")
    args = parser.parse_args()

    data = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = data.subset("train"), data.subset("test")
    ref = reference_column(train.quality)
    ref_cost, train_ref_cost = float(test.cost[:, ref].sum()), float(train.cost[:, ref].sum())
    one_request = float(np.nanmax(test.cost))  # the most a single test request can cost

    router = fit_router(train, args.predictor, candidates=train.candidates(max_output_tokens=1024))
    router.warm_start(train.prompts)
    est_test, est_train = router.estimate(test.prompts), router.estimate(train.prompts)
    curve = deferral_curve(est_test.quality, est_test.cost, test.quality, test.cost, ref_cost)

    def same_spend(run: BudgetRun) -> float:
        """Accuracy of the fixed-λ router whose test spend is the largest not above the run's."""
        within = np.flatnonzero(curve.x <= run.spent_usd / ref_cost + 1e-12)
        return float(curve.y[within[np.argmax(curve.x[within])]]) if within.size else float(curve.y[0])

    rows, results, failures = [], [], []
    for fraction in FRACTIONS:
        budget = fraction * ref_cost
        batch = batch_run(router, test, budget, fraction, args.predictor)
        online = online_run(router, test, budget, fraction, order=args.order, predictor=args.predictor)
        lam = calibrate_lambda(est_train.quality, est_train.cost, train.cost, fraction * train_ref_cost)
        fixed = fixed_lambda_run(est_test.quality, est_test.cost, test, lam, budget, fraction, args.predictor)
        like_batch, like_online = same_spend(batch), same_spend(online)
        best_batch, best_online = curve.a(batch.spent_usd / ref_cost), curve.a(online.spent_usd / ref_cost)
        checks = {
            "batch spend <= 102% of budget": batch.spent_usd <= 1.02 * budget,
            "online spend <= budget + one request": online.spent_usd <= budget + one_request,
            "online spend >= 95% of budget": online.spent_usd >= 0.95 * budget,
            "batch accuracy >= fixed-lambda at the same spend": batch.accuracy >= like_batch,
            "online accuracy >= fixed-lambda at the same spend": online.accuracy >= like_online,
        }
        failures += [f"{fraction:.0%}: {name}" for name, ok in checks.items() if not ok]
        rows.append([
            f"{fraction:.0%}", f"{batch.spent_usd / budget:.1%}", f"{batch.accuracy:.4f}", f"{like_batch:.4f}",
            f"{best_batch:.4f}", f"{online.spent_usd / budget:.1%}", f"{online.accuracy:.4f}", online.refused,
            f"{like_online:.4f}", f"{best_online:.4f}", f"{fixed.spent_usd / budget:.1%}", f"{fixed.accuracy:.4f}",
        ])
        results.append({
            "budget_fraction": fraction, "budget_usd": budget,
            "batch": _run(batch), "online": _run(online), "fixed_lambda_calibrated": {**_run(fixed), "lambda": lam},
            "fixed_lambda_at_batch_spend": like_batch, "fixed_lambda_at_online_spend": like_online,
            "best_fixed_lambda_at_batch_spend": best_batch, "best_fixed_lambda_at_online_spend": best_online,
            "checks": checks,
        })

    print_table(
        f"RouterBench subset test split ({len(test)} prompts), predictor {args.predictor}, online order "
        f"{args.order}; budgets as fractions of {data.models[ref]} on every test prompt (${ref_cost:.4f})",
        ["budget", "batch spend", "batch acc", "fixed@same", "best fixed", "online spend", "online acc",
         "refused", "fixed@same", "best fixed", "fixed-λ spend", "fixed-λ acc"],
        rows,
    )
    print("\nfixed@same: the fixed-λ router spending the most without spending more than the run; best fixed: "
          "the most accurate fixed λ within that spend (hindsight); fixed-λ: λ calibrated on train to the budget.")
    print("all checks pass" if not failures else "FAILED: " + "; ".join(failures))
    write_json("budget_runs", {
        "dataset": "routerbench_subset", "predictor": args.predictor, "online_order": args.order,
        "reference_model": data.models[ref], "reference_cost_usd": ref_cost, "n_test": len(test),
        "audc": curve.area(), "runs": results, "failures": failures,
    })


def _run(run: BudgetRun) -> dict:
    return {"spent_usd": run.spent_usd, "spend_of_budget": run.spent_usd / run.budget_usd,
            "accuracy": run.accuracy, "refused": run.refused}


if __name__ == "__main__":
    main()
