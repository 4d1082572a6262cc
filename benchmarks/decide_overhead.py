"""The cost of routing itself: one request's whole decision, and batch routing throughput.

Per request: `Router.decide` on the RouterBench test prompts with 11 candidates — count tokens,
embed the prompt, predict quality and length, price with the session's λ (warm-started pacer),
choose, and reserve the worst case in the ledger (in memory). Each decision is then settled,
as in serving, outside the timed part. Batch: `Router.route_batch` over 10,000 prompts with a
budget (token counting, embedding, prediction and the dual solver included).

Targets: p50 ≤ 1 ms and p99 ≤ 5 ms per decision; ≥ 5,000 prompts/s in batch. The embedder's
share of a decision and the solver's share of a batch are shown beside the totals.

Run: python benchmarks/decide_overhead.py [--predictor NAME]
"""

from __future__ import annotations

import argparse
import time


from _common import DATA, percentiles_ms, print_table, timed, write_json
from shared_core import Budget
from shared_core.data import load_dataset
from shared_core.evaluate import reference_column
from shared_core.fitting import DEFAULT_PREDICTOR, fit_router
from shared_core.solver import solve

BATCH_PROMPTS = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", action="append", help=f"default: prior and {DEFAULT_PREDICTOR}")
    args = parser.parse_args()
    names = args.predictor or list(dict.fromkeys(["prior", DEFAULT_PREDICTOR]))
    data = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = data.subset("train"), data.subset("test")
    ref = reference_column(train.quality)
    rows, results = [], {}
    for name in names:
        router = fit_router(train, name, candidates=train.candidates(max_output_tokens=1024))
        router.warm_start(train.prompts)
        budget = 0.25 * float(test.cost[:, ref].sum())
        router.set_budget("bench", Budget(usd=10 * budget, horizon=10 * len(test)))
        for prompt in test.prompts[:50]:  # warm caches (encodings, BLAS) before timing
            router.release(router.decide(prompt, "bench"))
        durations = []
        for i, prompt in enumerate(test.prompts * 2):
            start = time.perf_counter()
            decision = router.decide(prompt, "bench")
            durations.append(time.perf_counter() - start)
            router.settle(decision, cost=float(test.cost[i % len(test), test.models.index(decision.chosen)]))
        latency = percentiles_ms(durations)
        # The embedder's share of a decision (none for prompt-blind predictors).
        embed = (percentiles_ms([timed(lambda p=p: router.embedder.transform([p]), 1)[0] for p in test.prompts])
                 if router.embedder is not None else {"p50_ms": 0.0})

        prompts = (test.prompts * (BATCH_PROMPTS // len(test) + 1))[:BATCH_PROMPTS]
        start = time.perf_counter()
        plan = router.route_batch(prompts, budget=budget * BATCH_PROMPTS / len(test))
        batch_s = time.perf_counter() - start
        assert len(plan.models) == BATCH_PROMPTS
        rate = BATCH_PROMPTS / batch_s
        solve_s = timed(lambda: solve(plan.estimate.quality, plan.estimate.cost, budget=plan.solution.cost), 1)[0]
        ok = latency["p50_ms"] <= 1.0 and latency["p99_ms"] <= 5.0 and rate >= 5000
        rows.append([name, f"{latency['p50_ms']:.3f}", f"{latency['p90_ms']:.3f}", f"{latency['p99_ms']:.3f}",
                     f"{embed['p50_ms']:.3f}", f"{rate:,.0f}", f"{solve_s * 1e3:.1f}", "yes" if ok else "NO"])
        results[name] = {**latency, "embed_p50_ms": embed["p50_ms"], "decisions": len(durations),
                         "batch_prompts": BATCH_PROMPTS, "batch_seconds": batch_s, "batch_prompts_per_s": rate,
                         "batch_solver_seconds": solve_s, "meets_targets": ok}
    print_table("Routing overhead, 11 candidates (RouterBench test prompts; decide = tokens + embed + predict + "
                "price + choose + reserve)",
                ["predictor", "decide p50 ms", "p90 ms", "p99 ms", "of which embed p50", "batch prompts/s",
                 "of which solver ms", "targets met"], rows)
    write_json("decide_overhead", {"candidates": len(data.models), "results": results})


if __name__ == "__main__":
    main()
