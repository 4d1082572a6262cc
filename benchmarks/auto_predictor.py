"""`auto` against every single predictor, fitted on train and scored on test, on both shared datasets.

For RouterBench's subset and LLMRouter's 14-task set: each registered predictor (its defaults)
and `auto` (chosen by 5-fold cross-validated AUDC on the training split alone) are fitted with
`fit_router` on split == train; on split == test the deferral curve of the router's own
estimates gives AUDC, QNC and accuracy at 10/25/50 % of the reference model's cost. Then each
router runs the test prompts online through one paced session with a share of that cost, in file,
random and grouped order, and the share of the budget spent is reported (10, 25 and 50 %).

Run: python benchmarks/auto_predictor.py [--no-online]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import DATA, print_table, write_json
from predictors import curve_row, router_curve

from shared_core.data import load_dataset
from shared_core.evaluate import ORDERS, online_run, oracle_curve, prior_curve, reference_column
from shared_core.fitting import AUTO, PREDICTORS, fit_router

DATASETS = {
    "routerbench": (DATA / "routerbench_subset.parquet", None),
    "llmrouter": (DATA / "llmrouter_dcrouter.parquet", DATA / "llmrouter_dcrouter_prices.json"),
}
ONLINE_FRACTIONS = (0.1, 0.25, 0.5)


def run(name: str, online: bool) -> dict:
    path, prices = DATASETS[name]
    data = load_dataset(path, prices)
    train, test = data.subset("train"), data.subset("test")
    ref = reference_column(train.quality)
    ref_cost = float(np.nansum(test.cost[:, ref]))
    ref_acc = float(np.nanmean(test.quality[:, ref]))
    rows = [curve_row("oracle", oracle_curve(test.quality, test.cost, ref_cost), ref_acc),
            curve_row("prompt-blind prior", prior_curve(train.quality, train.cost, test.quality, test.cost, ref_cost),
                      ref_acc)]
    spend, selection = [], None
    candidates = train.candidates(max_output_tokens=1024)
    for predictor in (*PREDICTORS, AUTO):
        start = time.perf_counter()
        router = fit_router(train, predictor, candidates=candidates)
        seconds = time.perf_counter() - start
        label = predictor
        if predictor == AUTO:
            selection = router.quality.selection_
            label = f"auto → {selection.best.label}"
        rows.append({**curve_row(label, router_curve(router, test, ref_cost), ref_acc), "fit_s": seconds})
        print(f"  {name}: {label}: AUDC {rows[-1]['audc']:.4f}, fit {seconds:.1f} s", flush=True)
        if online:
            for fraction in ONLINE_FRACTIONS:
                for order in ORDERS:
                    run_ = online_run(router, test, fraction * ref_cost, fraction, order=order)
                    spend.append({"predictor": label, "fraction": fraction, "order": order,
                                  "spent_share": run_.spent_usd / run_.budget_usd, "accuracy": run_.accuracy,
                                  "refused": run_.refused})
    return {"rows": rows, "online": spend, "selection": selection.as_dict(),
            "reference": {"model": train.models[ref], "accuracy": ref_acc, "cost_usd": ref_cost}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-online", action="store_true", help="skip the online budget runs")
    args = parser.parse_args()
    results = {name: run(name, not args.no_online) for name in DATASETS}
    for name, result in results.items():
        print_table(f"{name}: test split (fit on train)", ["router", "AUDC", "QNC", "acc@10%", "acc@25%", "acc@50%",
                                                             "fit s"],
                    [[r["router"], f"{r['audc']:.4f}", "-" if r["qnc"] is None else f"{r['qnc']:.3f}",
                      f"{r['acc@0.1']:.3f}", f"{r['acc@0.25']:.3f}", f"{r['acc@0.5']:.3f}",
                      f"{r['fit_s']:.1f}" if "fit_s" in r else ""] for r in result["rows"]])
        sel = result["selection"]
        print_table(f"{name}: auto's 5-fold cross-validation on the training split (chose {sel['chosen']})",
                    ["spec", "CV AUDC", "± s.e.", f"vs {sel['baseline']}", "± s.e."],
                    [[r["spec"], f"{r['audc']:.4f}", f"{r['se']:.4f}", f"{r['gain']:+.4f}", f"{r['gain_se']:.4f}"]
                     for r in sel["rows"]])
        if result["online"]:
            print_table(f"{name}: online spend of the budget", ["predictor", "budget", "order", "spent %",
                                                                "accuracy", "refused"],
                        [[r["predictor"], f"{r['fraction']:.0%}", r["order"], f"{100 * r['spent_share']:.1f}",
                          f"{r['accuracy']:.3f}", r["refused"]] for r in result["online"]])
            shares = [r["spent_share"] for r in result["online"]]
            print(f"{name}: online spend {100 * min(shares):.1f}–{100 * max(shares):.1f} % of the budget over "
                  f"{len(shares)} runs")
    write_json("auto_predictor", results)


if __name__ == "__main__":
    main()
