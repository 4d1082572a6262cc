"""Token-counting throughput and Router.decide latency (prior predictor, 11 candidates, budgets).

Token counting on RouterBench's 3,164 few-shot prompts (examples repeat across prompts) and
LLMRouter's 6,108 mostly zero-shot ones, beside tiktoken called once per prompt. OmniRoute's
counts are timed with an empty line memo for every run ("cold"), and once more with every
line already seen ("warm": an agent re-sending its history). Best of 3.

Run: python benchmarks/core.py
"""

from __future__ import annotations

import time

import tiktoken
from _common import DATA, cold, percentiles_ms, print_table, timed, write_json

from shared_core import Budget
from shared_core.data import load_dataset
from shared_core.fitting import fit_router
from shared_core.tokens import count_message_tokens, count_tokens, count_tokens_batch


def main() -> None:
    data = load_dataset(DATA / "routerbench_subset.parquet")
    llmrouter = load_dataset(DATA / "llmrouter_dcrouter.parquet", prices=DATA / "llmrouter_dcrouter_prices.json")
    enc = tiktoken.get_encoding("cl100k_base")
    rows, results = [], {}
    for dataset, prompts in [("routerbench", data.prompts), ("llmrouter", llmrouter.prompts)]:
        total_tokens = sum(len(enc.encode_ordinary(p)) for p in prompts)
        timings = {}
        for name, fn in [
            ("tiktoken encode_ordinary, one call per prompt (baseline)",
             lambda: [len(enc.encode_ordinary(p)) for p in prompts]),
            ("tiktoken encode_ordinary_batch, 2 threads",
             lambda: [len(x) for x in enc.encode_ordinary_batch(prompts, num_threads=2)]),
            ("count_tokens, one call per prompt, cold memo", cold(lambda: [count_tokens(p) for p in prompts])),
            ("count_tokens_batch, cold memo", cold(lambda: count_tokens_batch(prompts))),
            ("count_tokens_batch, warm memo (every line seen)", lambda: count_tokens_batch(prompts)),
        ]:
            best = timings[name] = min(timed(fn, 3))
            results[f"{dataset}: {name}"] = {"seconds": best, "prompts_per_s": len(prompts) / best,
                                             "tokens_per_s": total_tokens / best}
        base = timings["tiktoken encode_ordinary, one call per prompt (baseline)"]
        rows += [[dataset, name, len(prompts) / t, total_tokens / t / 1e6, base / t] for name, t in timings.items()]
    print_table("token counting (best of 3; cold = empty line memo for every run)",
                ["prompts", "method", "prompts/s", "Mtokens/s", "speed vs baseline"], rows)

    prompts = data.prompts
    system = {"role": "system", "content": "Answer briefly."}
    messages = [[system, {"role": "user", "content": p}] for p in prompts[:500]]
    msg_t = timed(cold(lambda: [count_message_tokens(m) for m in messages]), 3)
    results["count_message_tokens"] = {"messages_per_s": len(messages) / min(msg_t)}

    train, test = data.subset("train"), data.subset("test")
    router = fit_router(train, "prior", candidates=train.candidates(max_output_tokens=1024))
    router.set_budget("bench", Budget(usd=1e6, horizon=10**9))

    def warm_up() -> None:  # on training prompts only: the test prompts' lines are counted fresh
        for p in train.prompts[:50]:
            router.release(router.decide(p, "bench"))

    cold(warm_up)()
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
    print_table("Router.decide, prior predictor, 11 candidates, 946 test prompts (each once)",
                ["path", "p50 ms", "p90 ms", "p99 ms"],
                [["decide (count + predict + price + choose + reserve)", *results["decide_prior_11"].values()],
                 ["decide + settle", *results["decide_plus_settle_prior_11"].values()]])
    write_json("core", results)


if __name__ == "__main__":
    main()
