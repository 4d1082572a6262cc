"""`omniroute demo`: replay a prompt stream through one session budget and show where money went."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import cast

import numpy as np

from ..budget import Budget, BudgetExceeded, ScopeState
from ..cli import whole_number
from ..defaults import DEMO_PROMPTS, default_candidates
from ..router import Router

# Requests the demo replays at most: its arrays are (requests × candidates), made up front.
MAX_REQUESTS = 1_000_000


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="route a prompt stream under a session budget, offline",
                       description="Replay prompts through one session budget and print spend per model.")
    p.add_argument("--data", help="a routing dataset (e.g. ../shared/data/routerbench_subset.parquet): "
                   "fit on its train split and replay its test split with the real recorded costs")
    p.add_argument("--budget", type=float, default=0.25,
                   help="session budget as a fraction of sending every prompt to the best model (default 0.25)")
    p.add_argument("--requests", type=whole_number(1, MAX_REQUESTS), default=200,
                   help="requests to replay without --data (default 200)")
    p.add_argument("--seed", type=whole_number(0), default=0, help="random seed for the simulated stream")
    # The session's Budget is made from --budget: its validation errors name it.
    p.set_defaults(run=run, field_options={"usd": "--budget"})


def run(args: argparse.Namespace) -> int:
    if not 0 < args.budget:
        raise ValueError(f"--budget must be > 0, got {args.budget}")
    if args.data:
        return _replay_dataset(args)
    return _replay_defaults(args)


def _replay_defaults(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    router = Router(default_candidates())
    prompts = [DEMO_PROMPTS[i] for i in rng.integers(0, len(DEMO_PROMPTS), args.requests)]
    best = max(router.candidates, key=lambda c: c.prior_quality or 0.0).name
    est = router.estimate(prompts)
    ref_cost = float(est.cost[:, est.candidates.index(best)].sum())
    budget = args.budget * ref_cost
    router.set_budget("demo", Budget(usd=budget, horizon=len(prompts)))
    rows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for prompt in prompts:
        try:
            decision = router.decide(prompt, "demo")
        except BudgetExceeded:
            rows["(refused: budget)"][0] += 1
            continue
        # Offline there is no model to call: the reply is about as long as the router predicted, as
        # the reference cost assumes (a fixed shorter one made any budget look four times larger).
        out = max(1, int(rng.poisson(decision.output_tokens[decision.chosen])))
        cost = router.settle(decision, output_tokens=out)
        row = rows[decision.chosen]
        row[0] += 1
        row[1] += cost
        row[2] += decision.quality[decision.chosen]
    state = cast(ScopeState, router.budget_state("demo"))  # set_budget above made the scope
    _print_table(rows, budget, router, state, quality_label="prior quality")
    print(f"\nreference: every prompt to {best} would cost ${ref_cost:.4f}; budget {args.budget:.0%} of it.")
    return 0


def _replay_dataset(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..evaluate import online_run, reference_column
    from ..fitting import fit_router

    data = load_dataset(args.data)
    if data.cost is None:
        raise ValueError(f"{args.data} has no costs: give a dataset with per-query costs or prices")
    train, test = data.subset("train"), data.subset("test")
    router = fit_router(train, candidates=train.candidates(max_output_tokens=1024))
    ref = reference_column(train.quality)
    ref_cost = float(np.nansum(cast(np.ndarray, test.cost)[:, ref]))  # data.cost was checked above
    budget = args.budget * ref_cost
    # In the file's order, as the demo has always replayed it (online_run's default groups by task).
    run = online_run(router, test, budget, args.budget, order="as-is")
    (state,) = router.store.report()  # the one session online_run paced: this router is new
    rows: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for i, j in enumerate(run.choice):
        row = rows[test.models[j] if j >= 0 else "(refused: budget)"]
        row[0] += 1
        row[2] += 0.0 if j < 0 or np.isnan(test.quality[i, j]) else test.quality[i, j]
    for name, spent in state.by_model.items():
        rows[name][1] = spent
    _print_table(rows, budget, router, state, quality_label="accuracy")
    print(f"\nreference: {train.models[ref]} on all {len(test)} test prompts costs ${ref_cost:.4f} "
          f"at accuracy {np.nanmean(test.quality[:, ref]):.3f}; budget {args.budget:.0%} of it.")
    return 0


def _print_table(
    rows: dict[str, list[float]], budget: float, router: Router, state: ScopeState, quality_label: str
) -> None:
    name_w = max(24, *(len(n) for n in rows))
    print(f"{'model':<{name_w}} {'requests':>9} {'spend $':>10} {quality_label:>14}")
    print("-" * (name_w + 36))
    total_n, total_cost, total_q = 0, 0.0, 0.0
    for name, (n, cost, q) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        mean_q = f"{q / n:.3f}" if n and not name.startswith("(") else "-"
        print(f"{name:<{name_w}} {int(n):>9} {cost:>10.4f} {mean_q:>14}")
        total_n += int(n)
        total_cost += cost
        total_q += q
    print("-" * (name_w + 36))
    print(f"{'total':<{name_w}} {total_n:>9} {total_cost:>10.4f} {total_q / max(total_n, 1):>14.3f}")
    print(f"\nbudget ${budget:.4f}: spent ${state.committed:.4f} ({state.committed / budget:.1%}), "
          f"open reservations {state.reserved:.4f}, final λ {router.pacer.price(state):.1f} quality/$")
