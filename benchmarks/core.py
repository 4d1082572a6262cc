"""Token-counting throughput and Router.decide latency (prior predictor, 11 candidates, budgets).

Run: python benchmarks/core.py
"""

from __future__ import annotations

import time

import tiktoken

from _common import DATA, percentiles_ms, print_table, timed, write_json
from shared_core import Budget
from shared_core.data import load_dataset
from shared_core.fitting import fit_router
from shared_core.tokens import count_message_tokens, count_tokens, count_tokens_batch


def main() -> None:
    data = load_dataset(DATA / "routerbench_subset.parquet")
    prompts = data.prompts
    total_tokens = sum(count_tokens_batch(prompts))

    enc = tiktoken.get_encoding("cl100k_base")
    rows, results = [], {}
    for name, fn in [
        ("tiktoken encode, one call per prompt (baseline)", lambda: [len(enc.encode(p)) for p in prompts]),
        ("count_tokens, one call per prompt", lambda: [count_tokens(p) for p in prompts]),
        ("tiktoken encode_ordinary_batch, 2 threads", lambda: [len(x) for x in enc.encode_ordinary_batch(prompts, num_threads=2)]),
        ("count_tokens_batch", lambda: count_tokens_batch(prompts)),
    ]:
        best = min(timed(fn, 3))
        results[name] = {"seconds": best, "prompts_per_s": len(prompts) / best, "tokens_per_s": total_tokens / best}
        rows.append([name, len(prompts) / best, total_tokens / best / 1e6])
    base = results["tiktoken encode, one call per prompt (baseline)"]["seconds"]
    for r, key in zip(rows, results):
        r.append(base / results[key]["seconds"])
    print_table("token counting (3,164 RouterBench prompts, best of 3)",
                ["method", "prompts/s", "Mtokens/s", "speed vs baseline"], rows)

    messages = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": p}] for p in prompts[:500]]
    msg_t = timed(lambda: [count_message_tokens(m) for m in messages], 3)
    results["count_message_tokens"] = {"messages_per_s": len(messages) / min(msg_t)}

    train, test = data.subset("train"), data.subset("test")
    router = fit_router(train, "prior", candidates=train.candidates(max_output_tokens=1024))
    router.set_budget("bench", Budget(usd=1e6, horizon=10**9))
    lat_decide, lat_full = [], []
    for p in test.prompts:
        t0 = time.perf_counter()
        d = router.decide(p, "bench")
        t1 = time.perf_counter()
        router.settle(d, output_tokens=20)
        t2 = time.perf_counter()
        lat_decide.append(t1 - t0)
        lat_full.append(t2 - t0)
    results["decide_prior_11"] = percentiles_ms(lat_decide)
    results["decide_plus_settle_prior_11"] = percentiles_ms(lat_full)
    print_table("Router.decide, prior predictor, 11 candidates, 946 test prompts",
                ["path", "p50 ms", "p90 ms", "p99 ms"],
                [["decide (count + predict + price + choose + reserve)", *results["decide_prior_11"].values()],
                 ["decide + settle", *results["decide_plus_settle_prior_11"].values()]])
    write_json("core", results)


if __name__ == "__main__":
    main()
