"""Bounded feedback: k-NN decide latency and memory after many feedbacks, capped and uncapped.

The default router (k-NN over RouterBench's training split) takes 0, 10,000 and 50,000 feedback
rows (real test-split prompts, cycled, labelled for one model), once with the default cap
(`KNNQuality(max_feedback=10_000)`) and once uncapped, as before the cap; after each step the
1,000 first test prompts are decided and timed. Feedback is fed in batches through
`KNNQuality.observe` (the same memory rows `Router.feedback` adds one at a time).

Run: python benchmarks/bounded_state.py
"""

from __future__ import annotations

import time

import numpy as np

from _common import DATA, percentiles_ms, print_table, write_json
from shared_core import Budget
from shared_core.data import load_dataset
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
    features = router._features(list(test.prompts))
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


def main() -> None:
    data = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = data.subset("train"), data.subset("test")
    results = {"capped (max_feedback=10,000)": run(train, test, 10_000), "uncapped (before)": run(train, test, 10**12)}
    table = [[name, f"{r['feedbacks']:,}", f"{r['memory_rows']:,}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
              f"{r['rss_mib']:.0f}"] for name, rows in results.items() for r in rows]
    print_table("k-NN decide after feedback (1,000 test prompts each step)",
                ["memory", "feedbacks", "memory rows", "decide p50 ms", "p99 ms", "RSS MiB"], table)
    write_json("bounded_state", results)


if __name__ == "__main__":
    main()
