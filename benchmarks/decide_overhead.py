"""The cost of routing itself: one request's whole decision, and batch routing throughput.

Per request: `Router.decide` once for each RouterBench test prompt, 11 candidates — count
tokens, embed the prompt, predict quality and length, price with the session's λ (warm-started
pacer), choose, and reserve the worst case in the ledger (in memory). Each decision is then
settled, as an adapter settles it — `calls.settle_usage` reading a LangChain-shaped usage report
(with cache details) and pricing it — timed separately. Caches are warmed on 50 training prompts
only.

Batch: `Router.route_batch` with a budget over every distinct prompt of a dataset — RouterBench's
3,164 (few-shot: examples repeat across prompts) and LLMRouter's 6,108 (mostly zero-shot) — with
token counting, embedding, prediction and the dual solver included. Every timed run starts with
an empty token-count memo, so only repetition inside the batch itself helps. Best and median of
REPEAT runs. Each stage is also timed beside the implementation it replaced (a tiktoken call per
prompt; scikit-learn's TfidfVectorizer.transform), in the same run, and checked to agree with it.

Targets: p50 ≤ 1 ms and p99 ≤ 5 ms per decision; ≥ 5,000 prompts/s in batch (median run).

Run: python benchmarks/decide_overhead.py [--predictor NAME]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import DATA, cold, percentiles_ms, print_table, timed, write_json

from shared_core import Budget, tokens
from shared_core.calls import settle_usage
from shared_core.data import load_dataset
from shared_core.embed import l2_normalise
from shared_core.evaluate import reference_column
from shared_core.fitting import DEFAULT_PREDICTOR, fit_router
from shared_core.ngrams import TOKEN_PATTERN
from shared_core.solver import solve

REPEAT = 5
ENCODING = "cl100k_base"


def sklearn_embedding(embedder):
    """The replaced path: TfidfVectorizer.transform (same vocabulary and IDF), then the projection."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    vectorizer = TfidfVectorizer(vocabulary=embedder.vocabularies_[0], ngram_range=embedder.word_ngrams,
                                 token_pattern=TOKEN_PATTERN, sublinear_tf=True, dtype=np.float32)
    vectorizer.idf_ = embedder.idf_[0]
    projection = np.ascontiguousarray(embedder.components_.T)
    return lambda texts: l2_normalise(normalize(vectorizer.transform(texts)) @ projection)


def decide_latency(router, train, test):
    """Per-request latency of Router.decide over the test prompts, each once."""
    ref = reference_column(train.quality)
    budget = 0.25 * float(test.cost[:, ref].sum())
    router.set_budget("bench", Budget(usd=10 * budget, horizon=10 * len(test)))
    for prompt in train.prompts[:50]:  # warm caches (encodings, BLAS) before timing
        router.release(router.decide(prompt, "bench"))
    durations, settling = [], []
    for prompt in test.prompts:
        start = time.perf_counter()
        decision = router.decide(prompt, "bench")
        durations.append(time.perf_counter() - start)
        inp = decision.input_tokens[decision.chosen]
        report = {"input_tokens": inp, "output_tokens": 40, "total_tokens": inp + 40,
                  "input_token_details": {"cache_read": inp // 2}, "output_token_details": {"reasoning": 0}}
        start = time.perf_counter()
        settle_usage(router, decision, report)
        settling.append(time.perf_counter() - start)
    latency = percentiles_ms(durations)
    latency["settle_p50_ms"] = percentiles_ms(settling)["p50_ms"]
    embed = (percentiles_ms([timed(lambda p=p: router.embedder.transform([p]), 1)[0] for p in test.prompts])
             if router.embedder is not None else {"p50_ms": 0.0})
    return {**latency, "embed_p50_ms": embed["p50_ms"], "decisions": len(durations)}


def batch_throughput(router, prompts, budget):
    """Whole route_batch runs, and each stage beside the implementation it replaced."""
    import tiktoken

    runs = timed(cold(lambda: router.route_batch(prompts, budget=budget)), REPEAT)
    encode = tiktoken.get_encoding(ENCODING).encode_ordinary
    assert tokens.count_tokens_batch(prompts, ENCODING) == [len(encode(p)) for p in prompts]
    stages = {"tokens": (min(timed(lambda: [len(encode(p)) for p in prompts], REPEAT)),
                         min(timed(cold(lambda: tokens.count_tokens_batch(prompts, ENCODING)), REPEAT)))}
    if router.embedder is not None:
        old = sklearn_embedding(router.embedder)
        np.testing.assert_allclose(router.embedder.transform(prompts), old(prompts), atol=5e-6)
        stages["embed"] = (min(timed(lambda: old(prompts), REPEAT)),
                           min(timed(lambda: router.embedder.transform(prompts), REPEAT)))
    X = router.embedder.transform(prompts) if router.embedder is not None else np.empty((len(prompts), 0))
    predict = timed(lambda: (router.quality.predict(X), router.lengths.predict(X)), REPEAT)
    stages["predict quality + length"] = (None, min(predict))
    est = router.route_batch(prompts, budget=budget).estimate
    stages["solve"] = (None, min(timed(lambda: solve(est.quality, est.cost, budget=budget), REPEAT)))
    best, median = min(runs), float(np.median(runs))
    return {"prompts": len(prompts), "seconds_best": best, "seconds_median": median,
            "prompts_per_s_best": len(prompts) / best, "prompts_per_s_median": len(prompts) / median,
            "stages": {k: {"replaced_s": a, "seconds": b} for k, (a, b) in stages.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictor", action="append", help=f"default: prior and {DEFAULT_PREDICTOR}")
    args = parser.parse_args()
    names = args.predictor or list(dict.fromkeys(["prior", DEFAULT_PREDICTOR]))
    datasets = {
        "routerbench": load_dataset(DATA / "routerbench_subset.parquet"),
        "llmrouter": load_dataset(DATA / "llmrouter_dcrouter.parquet", prices=DATA / "llmrouter_dcrouter_prices.json"),
    }
    latency_rows, batch_rows, stage_rows, results = [], [], [], {}
    for dataset, data in datasets.items():
        train, test = data.subset("train"), data.subset("test")
        prompts = list(dict.fromkeys(data.prompts))  # distinct prompts only
        for name in names:
            router = fit_router(train, name, candidates=train.candidates(max_output_tokens=1024))
            entry = results.setdefault(dataset, {})[name] = {"candidates": len(data.models)}
            if dataset == "routerbench":
                latency = entry["decide"] = decide_latency(router, train, test)
                ok = latency["p50_ms"] <= 1.0 and latency["p99_ms"] <= 5.0
                figures = (f"{latency[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "embed_p50_ms", "settle_p50_ms"))
                latency_rows.append([name, *figures, "yes" if ok else "NO"])
            ref = reference_column(train.quality)
            budget = 0.25 * float(data.cost[:, ref].sum()) * len(prompts) / len(data)
            batch = entry["batch"] = batch_throughput(router, prompts, budget)
            batch_rows.append([dataset, name, len(data.models), batch["prompts"], f"{batch['seconds_best']:.3f}",
                               f"{batch['prompts_per_s_best']:,.0f}", f"{batch['prompts_per_s_median']:,.0f}",
                               "yes" if batch["prompts_per_s_median"] >= 5000 else "NO"])
            for stage, figures in batch["stages"].items():
                old, new = figures["replaced_s"], figures["seconds"]
                stage_rows.append([dataset, name, stage, "–" if old is None else f"{old:.3f}", f"{new:.3f}",
                                   "–" if old is None else f"{old / new:.1f}×"])
    print_table("Per-request decision, 11 candidates (RouterBench test prompts, each once; tokens + embed + "
                "predict + price + choose + reserve)",
                ["predictor", "decide p50 ms", "p90 ms", "p99 ms", "of which embed p50", "settle p50 ms",
                 "p50 ≤ 1 ms, p99 ≤ 5 ms"],
                latency_rows)
    print_table(f"Batch routing (route_batch with a budget over every distinct prompt; cold token memo; "
                f"best and median of {REPEAT})",
                ["dataset", "predictor", "models", "prompts", "best s", "prompts/s best", "prompts/s median",
                 "≥ 5,000/s (median)"], batch_rows)
    print_table("Batch stages: best seconds, beside the implementation each replaced (same run, same outputs)",
                ["dataset", "predictor", "stage", "replaced s", "now s", "speed-up"], stage_rows)
    write_json("decide_overhead", {"repeat": REPEAT, "results": results})


if __name__ == "__main__":
    main()
