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

`--tune-warm-step 0,0.001,0.003` instead chooses the warm pacer's correction step on the training
split alone: fit on one half, replay the other half in grouped and random order, two splits.

Run: python benchmarks/budget_runs.py [--predictor NAME] [--order grouped] [--tune-warm-step ...]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import DATA, print_table, write_json

from shared_core.data import load_dataset
from shared_core.evaluate import (
    ORDERS,
    BudgetRun,
    batch_run,
    calibrate_lambda,
    deferral_curve,
    fixed_lambda_run,
    online_run,
    reference_column,
)
from shared_core.fitting import DEFAULT_PREDICTOR, fit_router

FRACTIONS = (0.10, 0.25, 0.50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", default=DEFAULT_PREDICTOR)
    parser.add_argument("--order", choices=ORDERS, default="grouped")
    parser.add_argument("--tune-warm-step", metavar="STEPS", help="comma-separated warm_step values to compare")
    args = parser.parse_args()

    data = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = data.subset("train"), data.subset("test")
    if args.tune_warm_step:
        tune_warm_step(train, args.predictor, [float(x) for x in args.tune_warm_step.split(",")])
        return
    ref = reference_column(train.quality)
    ref_cost, train_ref_cost = float(test.cost[:, ref].sum()), float(train.cost[:, ref].sum())
    one_request = float(np.nanmax(test.cost))  # the most a single test request can cost

    router = fit_router(train, args.predictor, candidates=train.candidates(max_output_tokens=1024))
    est_test, est_train = router.estimate(test.prompts), router.estimate(train.prompts)
    curve = deferral_curve(est_test.quality, est_test.cost, test.quality, test.cost, ref_cost)

    def same_spend(run: BudgetRun) -> float:
        """Accuracy of the fixed-λ router whose test spend is the largest not above the run's."""
        within = np.flatnonzero(curve.x <= run.spent_usd / ref_cost + 1e-12)
        return float(curve.y[within[np.argmax(curve.x[within])]]) if within.size else float(curve.y[0])

    rows, results, failures = [], [], []
    for fraction in FRACTIONS:
        budget = fraction * ref_cost
        batch = batch_run(est_test, test, budget, fraction, args.predictor)
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


def tune_warm_step(train, predictor: str, steps: list[float]) -> None:
    """Online accuracy minus the best fixed λ at the same spend, on held-out halves of the training split."""
    gaps: dict[tuple[float, str], list[float]] = {}
    spends: dict[float, list[float]] = {}
    for seed in (0, 1):
        half = np.random.default_rng(seed).permutation(len(train)) < len(train) // 2
        fit, replay = train.subset(half), train.subset(~half)
        ref = reference_column(fit.quality)
        ref_cost = float(replay.cost[:, ref].sum())
        router = fit_router(fit, predictor, candidates=fit.candidates(max_output_tokens=1024))
        est = router.estimate(replay.prompts)
        curve = deferral_curve(est.quality, est.cost, replay.quality, replay.cost, ref_cost)
        warm = router.pacer
        for step in steps:
            router.pacer = warm.model_copy(update={"warm_step": step})
            for order in ("grouped", "random"):
                for fraction in FRACTIONS:
                    run = online_run(router, replay, fraction * ref_cost, fraction, order=order, seed=seed)
                    gaps.setdefault((step, order), []).append(run.accuracy - curve.a(run.spent_usd / ref_cost))
                    spends.setdefault(step, []).append(run.spent_usd / (fraction * ref_cost))
    rows = [[step, f"{np.mean(gaps[step, 'grouped']) * 100:+.2f}", f"{np.mean(gaps[step, 'random']) * 100:+.2f}",
             f"{min(spends[step]):.1%}", f"{max(spends[step]):.1%}"] for step in steps]
    print_table(f"warm_step on held-out training halves ({predictor}; 2 splits × 3 budgets): online accuracy "
                "minus the best fixed λ at the same spend, in points",
                ["warm_step", "grouped", "random", "min spend", "max spend"], rows)
    write_json("budget_runs_tuning", {"predictor": predictor, "rows": [
        {"warm_step": step, "gap_grouped": float(np.mean(gaps[step, "grouped"])),
         "gap_random": float(np.mean(gaps[step, "random"])), "min_spend": min(spends[step]),
         "max_spend": max(spends[step])} for step in steps]})


def _run(run: BudgetRun) -> dict:
    return {"spent_usd": run.spent_usd, "spend_of_budget": run.spent_usd / run.budget_usd,
            "accuracy": run.accuracy, "refused": run.refused}


if __name__ == "__main__":
    main()
