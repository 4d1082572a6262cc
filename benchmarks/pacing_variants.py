"""Online pacing on datasets the project was not tuned on: one session's spend, per predictor and order.

Variants of the shared data that look like a new user's: each RouterBench task alone (its own
split), ARC + MBPP together, and three LLMRouter task families (code, maths, multiple-choice
knowledge) with a fresh seeded 70/30 split. No price table is used: prices are learned from the
training split's recorded costs, as `omniroute eval` does for a dataset it does not know. Each
predictor is fitted on train (warm start included) and runs the test prompts through one paced
session at 10/25/50 % of the reference model's cost in file, random and grouped order; the router
is run as shipped (`cap_headroom` 4) and with caps never lowered (`cap_headroom=None`).

Run: python benchmarks/pacing_variants.py [--predictors knn,cluster,...] [--variants rb-arc,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from _common import DATA, print_table, write_json

from shared_core.data import RoutingDataset, load_dataset
from shared_core.evaluate import ORDERS, online_run, reference_column
from shared_core.fitting import PREDICTORS, fit_router, priced_candidates

FRACTIONS = (0.1, 0.25, 0.5)
LLMROUTER_FAMILIES = {
    "llm-code": ("mbpp", "human_eval"),
    "llm-maths": ("gsm8k", "math", "agentverse-mgsm"),
    "llm-choice": ("mmlu", "gpqa", "arc_challenge", "openbook_qa", "commonsense_qa"),
}


def _unpriced(data: RoutingDataset) -> RoutingDataset:
    return dataclasses.replace(data, prices=None, _cache={})


def variants() -> dict[str, tuple[RoutingDataset, RoutingDataset]]:
    """(train, test) per variant, priced only by recorded costs."""
    rb = _unpriced(load_dataset(DATA / "routerbench_subset.parquet"))
    out = {}
    for name, tasks in {"rb-arc": ("arc-challenge",), "rb-winogrande": ("winogrande",), "rb-mbpp": ("mbpp",),
                        "rb-arc+mbpp": ("arc-challenge", "mbpp")}.items():
        part = rb.subset(np.isin(rb.task, tasks))
        out[name] = part.subset("train"), part.subset("test")
    llm = load_dataset(DATA / "llmrouter_dcrouter.parquet", DATA / "llmrouter_dcrouter_prices.json")
    llm = _unpriced(llm)
    for name, tasks in LLMROUTER_FAMILIES.items():
        part = llm.subset(np.isin(llm.task, tasks))
        train = np.random.default_rng(len(name)).random(len(part)) < 0.7
        out[name] = part.subset(train), part.subset(~train)
    return out


def run(name: str, train: RoutingDataset, test: RoutingDataset, predictors: list[str]) -> list[dict]:
    candidates, fit = priced_candidates(train, max_output_tokens=1024)
    ref = reference_column(train.quality)
    ref_cost = float(np.nansum(test.cost[:, ref]))
    # What one call of the reference model reserves (a median prompt, the full 1,024-token
    # allowance): a session can leave up to about that much unspent when caps cannot be lowered.
    allowance = candidates[ref].worst_case_cost(float(np.median(test.prompt_tokens())), 1024)
    rows = []
    for predictor in predictors:
        start = time.perf_counter()
        router = fit_router(train, predictor, candidates=candidates)
        fit_s = time.perf_counter() - start
        for headroom in (4.0, None):
            router.cap_headroom = headroom
            for fraction in FRACTIONS:
                for order in ORDERS:
                    r = online_run(router, test, fraction * ref_cost, fraction, order=order)
                    rows.append({"variant": name, "predictor": predictor, "cap_headroom": headroom,
                                 "fraction": fraction, "order": order, "spent_share": r.spent_usd / r.budget_usd,
                                 "accuracy": r.accuracy, "refused": r.refused, "test_prompts": len(test),
                                 "allowance_share": allowance / (fraction * ref_cost), "fit_s": fit_s})
        mine = [r for r in rows if r["predictor"] == predictor and r["cap_headroom"] == 4.0]
        print(f"  {name}: {predictor}: spend {min(r['spent_share'] for r in mine):.1%}–"
              f"{max(r['spent_share'] for r in mine):.1%}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictors", default=",".join(PREDICTORS), help="comma-separated predictor names")
    parser.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    predictors = args.predictors.split(",")
    chosen = set(filter(None, args.variants.split(",")))
    rows = []
    for name, (train, test) in variants().items():
        if not chosen or name in chosen:
            rows += run(name, train, test, predictors)
    table = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        for predictor in predictors:
            for headroom in (4.0, None):
                mine = [
                    r for r in rows if (r["variant"], r["predictor"], r["cap_headroom"]) == (name, predictor, headroom)
                ]
                if not mine:
                    continue
                spend = [r["spent_share"] for r in mine]
                at10 = [r for r in mine if r["fraction"] == 0.1]
                table.append([name, mine[0]["test_prompts"], f"{mine[0]['allowance_share']:.1%}", predictor,
                              "4" if headroom else "off",
                              f"{min(spend):.1%}", f"{max(spend):.1%}", sum(s < 0.95 for s in spend),
                              f"{np.mean([r['accuracy'] for r in at10]):.4f}", sum(r["refused"] for r in mine)])
    print_table(
        "Online spend share over 3 budgets × 3 orders (acc@10 %: mean over orders)",
        [
            "variant",
            "test",
            "allowance @10 %",
            "predictor",
            "cap_headroom",
            "min",
            "max",
            "runs < 95 %",
            "acc@10 %",
            "refused",
        ],
        table,
    )
    write_json("pacing_variants", {"rows": rows})


if __name__ == "__main__":
    main()
