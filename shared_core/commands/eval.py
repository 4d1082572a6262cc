"""`omniroute eval DATA`: fit on the train split, measure routers and budget runs on the test split."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..candidates import Candidate
from ..cli import whole_number
from ..data import RoutingDataset, load_dataset
from ..evaluate import (
    ORDERS,
    BudgetRun,
    Curve,
    batch_run,
    calibrate_lambda,
    deferral_curve,
    fixed_lambda_run,
    online_run,
    oracle_curve,
    prior_curve,
    reference_column,
    summarise,
)
from ..fitting import DEFAULT_PREDICTOR, PREDICTOR_NAMES, fit_router
from ..plot import plot_evaluation, pyplot
from ..progress import progress
from .outputs import check_distinct, check_output_file
from .report import candidates_for, print_selection

_DEFAULT_BUDGETS = "0.1,0.25,0.5"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="deferral curves and budget runs of routers on a dataset's test split",
        description=(
            "Fit each predictor on the rows with split == train, then measure it on split == test: the "
            "deferral curve (AUDC, AUDC up to 50% cost, quality-neutral cost, accuracy at each budget) and, "
            "per budget, a batch run (the solver over the whole test set), an online run (prompts one at a "
            "time through one paced session, settled with the dataset's actual costs) and a per-query "
            "router with a fixed λ calibrated on the training split. Costs and budgets are fractions of "
            "sending every test prompt to the reference model, the most accurate on the training split."
        ),
    )
    p.add_argument("data", help="routing dataset (.parquet, .pkl, .csv, .jsonl) with a train/test split column")
    p.add_argument("--split-column", default="split", help="column holding train/test (default: split)")
    p.add_argument("--prices", help="JSON price table for datasets without costs: {model: [input, output], ...} "
                                    "in USD per 1M tokens")
    p.add_argument("--predictor", action="append", metavar="NAME",
                   help=f"quality predictor to evaluate, repeatable; the first one's curve goes to --decisions "
                        f"(default: {DEFAULT_PREDICTOR}; known: {', '.join(PREDICTOR_NAMES)})")
    p.add_argument("--budgets", default=_DEFAULT_BUDGETS,
                   help=f"budget fractions of the reference cost, comma-separated (default: {_DEFAULT_BUDGETS})")
    p.add_argument("--order", choices=ORDERS, default="grouped",
                   help="online replay order: the file's, shuffled, or grouped by task (the adversarial "
                        "case; default)")
    p.add_argument("--seed", type=whole_number(0), default=0, help="seed of --order random (default: 0)")
    p.add_argument("--max-output-tokens", type=int, default=1024,
                   help="candidates' output limit, hence the worst case each online request reserves (default: 1024)")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--decisions", metavar="FILE",
                   help="write sample_id,run,model for every test prompt of every run (runs: batch@F, online@F, "
                        "fixed-lambda@F, curve@K; other predictors' runs are prefixed NAME:); a refused "
                        "online request has an empty model")
    p.add_argument("--plot", metavar="FILE.png", help="draw the curves and budget runs (needs omniroute[plot])")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


@dataclass
class _Result:
    """One predictor's measurements."""

    name: str
    curve: Curve
    runs: list[BudgetRun]
    fixed: list[tuple[BudgetRun, float]]


def run(args: argparse.Namespace) -> int:
    budgets = _parse_budgets(args.budgets)
    names = args.predictor or [DEFAULT_PREDICTOR]
    unknown = [n for n in names if n not in PREDICTOR_NAMES]
    if unknown:
        raise ValueError(f"unknown predictor {unknown[0]!r}; choose from {list(PREDICTOR_NAMES)}")
    outputs = {"--json": args.json, "--decisions": args.decisions, "--plot": args.plot}
    for option, path in outputs.items():
        if path is not None:
            check_output_file(path, option, inputs=[args.data, *([args.prices] if args.prices else [])])
    check_distinct(outputs)
    if args.plot:
        pyplot()  # fail before the long work when matplotlib is missing
    data = load_dataset(args.data, args.prices, split_column=args.split_column)
    if data.cost is None:
        raise ValueError(f"{args.data} has no per-query costs: pass --prices FILE")
    train, test = data.subset("train"), data.subset("test")
    # data.cost was checked above, and subsets keep it.
    train_cost, test_cost = cast(np.ndarray, train.cost), cast(np.ndarray, test.cost)
    candidates = candidates_for(train, max_output_tokens=args.max_output_tokens)
    ref = reference_column(train.quality)
    ref_cost = float(np.nansum(test_cost[:, ref]))
    if not ref_cost > 0:
        raise ValueError(f"the reference model {data.models[ref]!r} costs nothing on the test split")
    ref_acc = float(np.nanmean(test.quality[:, ref]))
    show = not args.no_progress

    results = [_evaluate(name, train, test, candidates, ref, ref_cost, budgets, args, show) for name in names]
    baselines = {
        "oracle": oracle_curve(test.quality, test_cost, ref_cost),
        "prior": prior_curve(train.quality, train_cost, test.quality, test_cost, ref_cost),
    }
    _print_report(data, train, test, ref, ref_cost, ref_acc, budgets, baselines, results, args.order)
    if args.json:
        report = _json_report(train, test, ref, ref_cost, ref_acc, budgets, baselines, results, args.order)
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.decisions:
        _write_decisions(Path(args.decisions), test, results)
    if args.plot:
        plot_evaluation(
            args.plot, {r.name: r.curve for r in results},
            baselines={"oracle": baselines["oracle"], "prompt-blind prior": baselines["prior"]},
            reference=(data.models[ref], ref_acc),
            runs=[run for r in results for run in r.runs + [f for f, _ in r.fixed]],
            title=f"{Path(args.data).name}: {len(test)} test prompts, online order {args.order}",
        )
    return 0


def _parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--budgets must be comma-separated numbers, got {text!r}") from None
    if not budgets or any(not (0 < b <= 1) for b in budgets):
        raise ValueError(f"--budgets must be fractions in (0, 1], got {text!r}")
    return sorted(set(budgets))


def _evaluate(
    name: str, train: RoutingDataset, test: RoutingDataset, candidates: list[Candidate], ref: int, ref_cost: float,
    budgets: list[float], args: argparse.Namespace, show: bool,
) -> _Result:
    """Fit one predictor and run its curve, batch, online and fixed-λ runs."""
    router = fit_router(train, name, candidates=candidates, show_progress=show)
    print_selection(router)
    est_test = router.estimate(test.prompts)
    est_train = router.estimate(train.prompts)
    # The caller checked that the dataset has costs, and subsets keep them.
    train_cost, test_cost = cast(np.ndarray, train.cost), cast(np.ndarray, test.cost)
    curve = deferral_curve(est_test.quality, est_test.cost, test.quality, test_cost, ref_cost, keep_choices=True)
    train_ref_cost = float(np.nansum(train_cost[:, ref]))
    runs: list[BudgetRun] = []
    fixed: list[tuple[BudgetRun, float]] = []
    for fraction in budgets:
        usd = fraction * ref_cost
        runs.append(batch_run(est_test, test, usd, fraction, predictor=name))
        runs.append(online_run(
            router, test, usd, fraction, order=args.order, seed=args.seed, predictor=name,
            # mypy cannot infer a lambda with a default argument (it binds this iteration's fraction).
            progress=lambda rows, f=fraction: progress(rows, label=f"{name} online@{f:g}", enabled=show),  # type: ignore[misc]
        ))
        lam = calibrate_lambda(est_train.quality, est_train.cost, train_cost, fraction * train_ref_cost)
        fixed.append((fixed_lambda_run(est_test.quality, est_test.cost, test, lam, usd, fraction, predictor=name), lam))
    return _Result(name, curve, runs, fixed)


def _json_report(
    train: RoutingDataset, test: RoutingDataset, ref: int, ref_cost: float, ref_acc: float, budgets: list[float],
    baselines: dict[str, Curve], results: list[_Result], order: str,
) -> dict[str, Any]:
    return {
        "n_train": len(train),
        "n_test": len(test),
        "models": list(test.models),
        "reference_model": test.models[ref],
        "online_order": order,
        "baselines": {
            **{k: summarise(c, ref_acc, budgets) for k, c in baselines.items()},
            "reference": {"model": test.models[ref], "accuracy": ref_acc, "cost_usd": ref_cost, "cost_fraction": 1.0},
        },
        "predictors": {r.name: summarise(r.curve, ref_acc, budgets) for r in results},
        "budget_runs": [run.to_dict() for r in results for run in r.runs],
        "fixed_lambda_runs": [{**f.to_dict(), "lambda": lam} for r in results for f, lam in r.fixed],
    }


def _write_decisions(path: Path, test: RoutingDataset, results: list[_Result]) -> None:
    """sample_id,run,model rows: every budget run of every predictor, and the first one's curve points."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sample_id", "run", "model"])
        for k, r in enumerate(results):
            prefix = "" if k == 0 else f"{r.name}:"
            runs = [(run.name, run.choice) for run in r.runs + [f for f, _ in r.fixed]]
            if k == 0:
                runs += [(f"curve@{i}", ch) for i, ch in enumerate(r.curve.choices)]  # type: ignore[arg-type]
            for label, choice in runs:
                out.writerows(
                    (sid, prefix + label, test.models[j] if j >= 0 else "")
                    for sid, j in zip(test.sample_ids, choice, strict=False)
                )


def _print_report(
    data: RoutingDataset, train: RoutingDataset, test: RoutingDataset, ref: int, ref_cost: float, ref_acc: float,
    budgets: list[float], baselines: dict[str, Curve], results: list[_Result], order: str,
) -> None:
    w = max(18, *(len(r.name) for r in results))
    print(f"{Path(data.source).name}: {len(train)} train / {len(test)} test prompts, {len(data.models)} models")
    print(f"reference: {data.models[ref]} (most accurate on train), test accuracy {ref_acc:.3f}, "
          f"${ref_cost:.4f} for every test prompt\n")
    head = f"{'router':<{w}} {'AUDC':>6} {'AUDC50':>7} {'QNC':>6}" + "".join(f" {f'acc@{f:g}':>9}" for f in budgets)
    print(head)
    print("-" * len(head))
    rows = [("oracle", baselines["oracle"]), ("prompt-blind prior", baselines["prior"])]
    for label, curve in rows + [(r.name, r.curve) for r in results]:
        qnc = curve.qnc(ref_acc)
        print(f"{label:<{w}} {curve.area():>6.3f} {curve.area(0.5):>7.3f} {('-' if qnc is None else f'{qnc:.3f}'):>6}"
              + "".join(f" {curve.a(f):>9.3f}" for f in budgets))
    print(f"\nbudget runs (online order: {order}); spend as % of budget, accuracy on test")
    head = (f"{'router':<{w}} {'budget':>7} {'$':>8} | {'batch %':>8} {'acc':>6} | {'online %':>8} {'acc':>6} "
            f"{'refused':>7} | {'fixed-λ %':>9} {'acc':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        for fraction, (fixed, _) in zip(budgets, r.fixed, strict=False):
            batch, online = (next(x for x in r.runs if x.mode == m and x.budget_fraction == fraction)
                             for m in ("batch", "online"))
            print(f"{r.name:<{w}} {fraction:>7.0%} {batch.budget_usd:>8.4f} | "
                  f"{batch.spent_usd / batch.budget_usd:>8.1%} {batch.accuracy:>6.3f} | "
                  f"{online.spent_usd / online.budget_usd:>8.1%} {online.accuracy:>6.3f} {online.refused:>7} | "
                  f"{fixed.spent_usd / fixed.budget_usd:>9.1%} {fixed.accuracy:>6.3f}")
    sys.stdout.flush()
