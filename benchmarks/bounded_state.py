"""Bounded feedback: k-NN decide latency and memory after many feedbacks, capped and uncapped.

The default router (k-NN over RouterBench's training split) takes 0, 10,000 and 50,000 feedback
rows (real test-split prompts, cycled, labelled for one model), once with the default cap
(`KNNQuality(max_feedback=10_000)`) and once uncapped, as before the cap; after each step the
1,000 first test prompts are decided and timed. Feedback is fed in batches through
`KNNQuality.observe` (the same memory rows `Router.feedback` adds one at a time).

It first measures what the cap costs in routing quality: test AUDC of a k-NN router fitted on
half the training split after feedback from the other half, capped and uncapped.

Run: python benchmarks/bounded_state.py
"""

from __future__ import annotations

import time

import numpy as np
from _common import DATA, percentiles_ms, print_table, write_json

from shared_core import Budget
from shared_core.data import load_dataset
from shared_core.evaluate import deferral_curve, reference_column
from shared_core.fitting import fit_router

STEPS = (0, 10_000, 50_000)
BATCH = 1_000


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def run(train, test, cap: int) -> list[dict]:
    router = fit_router(train, "knn", warm_start=False)
    router.quality.max_feedback = cap
    router.set_budget("bench", Budget(usd=1e6))
    prompts = list(test.prompts[:1_000])
    features = router.pool.features(list(test.prompts))
    model = router.candidates[0].name
    rows, fed = [], 0
    for step in STEPS:
        while fed < step:
            X = features[np.arange(fed, fed + BATCH) % len(features)]
            router.quality.observe(X, model, np.ones(BATCH))
            fed += BATCH
        durations = []
        for p in prompts:
            start = time.perf_counter()
            router.release(router.decide(p, "bench"))
            durations.append(time.perf_counter() - start)
        rows.append({"feedbacks": step, "memory_rows": len(router.quality.memory_.X), "rss_mib": rss_mib(),
                     **percentiles_ms(durations)})
    return rows


def feedback_audc(train, test, seeds: tuple[int, ...] = (1, 2, 3)) -> list[dict]:
    """Test AUDC of a k-NN router fitted on half the training split, after feedback from the other
    half (every model's label of every prompt, one row each, in a shuffled order: about 12,000
    rows), with the memory capped at several sizes and uncapped; mean and spread over `seeds`
    (the shuffles decide which rows a cap keeps)."""
    half = np.random.default_rng(0).permutation(len(train)) < len(train) // 2
    fit, fed = train.subset(half), train.subset(~half)
    ref = reference_column(fit.quality)
    ref_cost = float(np.nansum(test.cost[:, ref]))
    events = [(i, j) for i in range(len(fed)) for j in range(len(fed.models)) if np.isfinite(fed.quality[i, j])]
    rows = []
    for label, cap in (("no feedback", None), ("capped at 2,000", 2_000), ("capped at 10,000 (default)", 10_000),
                       ("uncapped", 10**12)):
        audcs, kept = [], 0
        for seed in seeds if cap is not None else seeds[:1]:
            router = fit_router(fit, "knn", warm_start=False)
            if cap is not None:
                X = router.pool.features(list(fed.prompts))
                router.quality.max_feedback = cap
                for k in np.random.default_rng(seed).permutation(len(events)):
                    i, j = events[k]
                    router.quality.observe(X[i:i + 1], fed.models[j], fed.quality[i:i + 1, j])
            est = router.estimate(test.prompts)
            audcs.append(deferral_curve(est.quality, est.cost, test.quality, test.cost, ref_cost).area())
            kept = len(router.quality.memory_.X)
        rows.append({"memory": label, "feedback_rows": 0 if cap is None else len(events), "memory_rows": kept,
                     "audc": float(np.mean(audcs)), "audc_sd": float(np.std(audcs, ddof=1)) if len(audcs) > 1 else 0.0,
                     "runs": len(audcs)})
        print(f"  {label}: AUDC {rows[-1]['audc']:.4f} ± {rows[-1]['audc_sd']:.4f}", flush=True)
    return rows


def main() -> None:
    data = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = data.subset("train"), data.subset("test")
    quality_rows = feedback_audc(train, test)
    print_table("k-NN test AUDC after feedback from the other half of the training split",
                ["memory", "feedback rows", "memory rows", "test AUDC (mean)", "s.d. over shuffles"],
                [[r["memory"], f"{r['feedback_rows']:,}", f"{r['memory_rows']:,}", f"{r['audc']:.4f}",
                  f"{r['audc_sd']:.4f}"] for r in quality_rows])
    results = {"capped (max_feedback=10,000)": run(train, test, 10_000), "uncapped (before)": run(train, test, 10**12),
               "audc_after_feedback": quality_rows}
    table = [[name, f"{r['feedbacks']:,}", f"{r['memory_rows']:,}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
              f"{r['rss_mib']:.0f}"] for name, rows in results.items() if name != "audc_after_feedback" for r in rows]
    print_table("k-NN decide after feedback (1,000 test prompts each step)",
                ["memory", "feedbacks", "memory rows", "decide p50 ms", "p99 ms", "RSS MiB"], table)
    write_json("bounded_state", results)


if __name__ == "__main__":
    main()
