"""Quality and length predictors on real routing data: deferral curves, unseen models, cost estimates, speed.

Run: python benchmarks/predictors.py [--quick]

Every router is fitted on split == train and measured on split == test. A curve routes each test
prompt to argmaxⱼ (q̂ − λ ĉ) with the router's own estimates (`Router.estimate`: predicted
quality, predicted cost from counted input tokens and predicted output tokens) and scores the
choices with the dataset's true qualities and costs. Costs are fractions of sending every test
prompt to the reference model (the most accurate on train).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from _common import DATA, percentiles_ms, print_table, timed, write_json

from shared_core.data import RoutingDataset, load_dataset
from shared_core.embed import TfidfSvdEmbedder
from shared_core.evaluate import Curve, deferral_curve, oracle_curve, prior_curve, reference_column
from shared_core.fitting import DEFAULT_PREDICTOR, PREDICTORS, fit_prices, fit_router
from shared_core.length import HybridLength
from shared_core.quality import HybridQuality, KNNQuality, LogisticQuality

FRACTIONS = (0.1, 0.25, 0.5)
UNSEEN_PREDICTORS = ("cluster", "learned-map", "knn", "parametric", "hybrid")


def curve_row(name: str, curve: Curve, ref_acc: float) -> dict:
    """The table row of one curve: AUDC, quality-neutral cost, accuracy at each budget fraction."""
    return {"router": name, "audc": curve.area(), "qnc": curve.qnc(ref_acc),
            **{f"acc@{f:g}": curve.a(f) for f in FRACTIONS}}


def router_curve(router, test: RoutingDataset, ref_cost: float, models: list[str] | None = None) -> Curve:
    """The deferral curve of a fitted router on the test split (columns in the dataset's order)."""
    est = router.estimate(test.prompts)
    cols = [est.candidates.index(m) for m in (models or test.models)]
    return deferral_curve(est.quality[:, cols], est.cost[:, cols], test.quality, test.cost, ref_cost)


def columns(data: RoutingDataset, models: list[str]) -> RoutingDataset:
    """The dataset restricted to some models."""
    idx = [data.models.index(m) for m in models]
    return replace(
        data, models=list(models), quality=data.quality[:, idx],
        cost=None if data.cost is None else data.cost[:, idx],
        responses=None if data.responses is None else [[row[j] for j in idx] for row in data.responses],
        prices=None if data.prices is None else {m: data.prices[m] for m in models}, _cache={},
    )


def audc_table(train: RoutingDataset, test: RoutingDataset, embedder) -> tuple[list[dict], dict]:
    """Every registered predictor's curve next to the oracle and the prompt-blind prior."""
    ref = reference_column(train.quality)
    ref_cost = float(np.nansum(test.cost[:, ref]))
    ref_acc = float(np.nanmean(test.quality[:, ref]))
    rows = [curve_row("oracle", oracle_curve(test.quality, test.cost, ref_cost), ref_acc),
            curve_row("prompt-blind prior (mean cost)",
                      prior_curve(train.quality, train.cost, test.quality, test.cost, ref_cost), ref_acc)]
    fit_s = {}
    for name in PREDICTORS:
        t0 = time.perf_counter()
        router = fit_router(train, name, embedder=embedder)
        fit_s[name] = time.perf_counter() - t0
        rows.append({**curve_row(name, router_curve(router, test, ref_cost), ref_acc), "fit_s": fit_s[name]})
    return rows, {"reference_model": train.models[ref], "reference_accuracy": ref_acc, "reference_cost_usd": ref_cost}


def cv_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number of each row (seeded, balanced)."""
    return np.random.default_rng(seed).permutation(n) % folds


def cross_validate(
    train: RoutingDataset, X: np.ndarray, predictions: Callable[[np.ndarray, np.ndarray], list[np.ndarray]],
    folds: int = 5,
) -> dict:
    """5-fold cross-validation on the training split only: AUDC (± s.e.) and Brier score per variant.

    `predictions(fit_rows, held_rows)` returns one quality matrix per variant for the held rows.
    """
    fold = cv_folds(len(train), folds)
    inp = train.prompt_tokens().astype(float)
    p_in = np.array([train.prices[m][0] for m in train.models]) / 1e6
    p_out = np.array([train.prices[m][1] for m in train.models]) / 1e6
    out = train.output_tokens().astype(float)
    ref = reference_column(train.quality)
    audc, sq_err, n_labels = [], 0.0, 0
    for f in range(folds):
        a, b = fold != f, fold == f
        c_pred = inp[b, None] * p_in + HybridLength().fit(X[a], out[a], train.models).predict(X[b]) * p_out
        ref_cost = float(np.nansum(train.cost[b, ref]))
        labelled = ~np.isnan(train.quality[b])
        n_labels += labelled.sum()
        qs = predictions(a, b)
        audc.append([deferral_curve(q, c_pred, train.quality[b], train.cost[b], ref_cost).area() for q in qs])
        sq_err = sq_err + np.array([((q - train.quality[b])[labelled] ** 2).sum() for q in qs])
    audc = np.array(audc)
    return {"cv_audc": audc.mean(axis=0).tolist(), "cv_audc_se": (audc.std(axis=0) / np.sqrt(folds)).tolist(),
            "cv_brier": (sq_err / n_labels).tolist()}


def choose_gamma(train: RoutingDataset, X: np.ndarray, gammas: list[float]) -> dict:
    """γ of the hybrid by cross-validation on the training split."""
    defaults = HybridQuality()

    def blends(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        qp = LogisticQuality(C=defaults.C).fit(X[a], train.quality[a], train.models).predict(X[b])
        qk = KNNQuality(k=defaults.k).fit(X[a], train.quality[a], train.models).predict(X[b])
        return [g * qp + (1 - g) * qk for g in gammas]

    cv = cross_validate(train, X, blends)
    return {"gammas": gammas, **cv, "best_gamma_by_audc": gammas[int(np.argmax(cv["cv_audc"]))],
            "best_gamma_by_brier": gammas[int(np.argmin(cv["cv_brier"]))]}


def choose_k(train: RoutingDataset, X: np.ndarray, ks: list[int]) -> dict:
    """k of the k-NN predictor by cross-validation on the training split."""
    def knns(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        return [KNNQuality(k=k).fit(X[a], train.quality[a], train.models).predict(X[b]) for k in ks]

    cv = cross_validate(train, X, knns)
    return {"ks": ks, **cv, "best_k_by_audc": ks[int(np.argmax(cv["cv_audc"]))],
            "best_k_by_brier": ks[int(np.argmin(cv["cv_brier"]))]}


def choose_delta(train: RoutingDataset, X: np.ndarray, deltas: np.ndarray, folds: int = 5) -> dict:
    """δ of the length blend by cross-validation on train: mean absolute error of predicted cost."""
    fold = cv_folds(len(train), folds)
    p_out = np.array([train.prices[m][1] for m in train.models]) / 1e6
    out = train.output_tokens().astype(float)
    err = np.zeros(len(deltas))
    for f in range(folds):
        a, b = fold != f, fold == f
        for i, delta in enumerate(deltas):
            pred = HybridLength(delta=delta).fit(X[a], out[a], train.models).predict(X[b])
            err[i] += (np.abs(pred - out[b]) * p_out).sum()
    return {"deltas": deltas.tolist(), "cv_output_cost_mae_usd": (err / len(train)).tolist(),
            "best_delta": float(deltas[int(np.argmin(err))])}


def unseen_models(
    train: RoutingDataset, test: RoutingDataset, embedder, seeds: range, profile: int = 400
) -> list[dict]:
    """Fit on 7 models, add the other 4 from `profile` training prompts; AUDC vs the 11-model fit."""
    ref_cost = float(np.nansum(test.cost[:, reference_column(train.quality)]))
    cands = {c.name: c for c in train.candidates()}
    out = train.output_tokens()
    full = {name: router_curve(fit_router(train, name, embedder=embedder), test, ref_cost).area()
            for name in UNSEEN_PREDICTORS}
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        held = sorted(rng.choice(train.models, 4, replace=False).tolist(), key=train.models.index)
        kept = [m for m in train.models if m not in held]
        rows_profile = rng.choice(len(train), profile, replace=False)
        for name in UNSEEN_PREDICTORS:
            router = fit_router(columns(train, kept), name, embedder=embedder)
            t0 = time.perf_counter()
            for m in held:
                j = train.models.index(m)
                router.add_candidate(cands[m], [train.prompts[i] for i in rows_profile], train.quality[rows_profile, j],
                                     profile_output_tokens=out[rows_profile, j])
            add_s = (time.perf_counter() - t0) / len(held)
            audc = router_curve(router, test, ref_cost).area()
            rows.append({"seed": seed, "held_out": held, "predictor": name, "audc_11_fit": full[name],
                         "audc_7_fit_plus_4_added": audc, "difference": audc - full[name], "add_candidate_s": add_s})
    return rows


def cost_errors(router, test: RoutingDataset) -> tuple[list[dict], float]:
    """Per model: median and p90 relative error of the pre-call cost estimate, and of its sum."""
    est = router.estimate(test.prompts)
    rows = []
    for j, m in enumerate(test.models):
        c_hat, c = est.cost[:, est.candidates.index(m)], test.cost[:, j]
        ok = np.isfinite(c) & (c > 0)
        rel = np.abs(c_hat[ok] - c[ok]) / c[ok]
        rows.append({"model": m, "median_rel_error": float(np.median(rel)),
                     "p90_rel_error": float(np.percentile(rel, 90)),
                     "summed_rel_error": float(abs(c_hat[ok].sum() - c[ok].sum()) / c[ok].sum())})
    cols = [est.candidates.index(m) for m in test.models]
    ok = np.isfinite(test.cost)
    total = float(abs(est.cost[:, cols][ok].sum() - test.cost[ok].sum()) / test.cost[ok].sum())
    return rows, total


def learned_prices(train: RoutingDataset, test: RoutingDataset) -> list[dict]:
    """Prices learned from recorded costs (as if there were no price table) vs the true table."""
    rows = []
    for label, data in (("with responses", train), ("without responses", replace(train, responses=None, _cache={}))):
        fit = fit_prices(replace(data, prices=None))
        for m in train.models:
            p_in, p_out = fit.prices[m]
            true_in, true_out = train.prices[m]
            j = test.models.index(m)
            out = test.output_tokens()[:, j] if label == "with responses" else fit.assumed_output_tokens
            pred = (test.prompt_tokens() * p_in + out * p_out) / 1e6
            c = test.cost[:, test.models.index(m)]
            rows.append({"variant": label, "model": m, "learned_input": p_in, "learned_output": p_out,
                         "true_input": true_in, "true_output": true_out, "train_r2": fit.r2[m],
                         "test_median_rel_error": float(np.median(np.abs(pred - c) / c)),
                         "test_summed_rel_error": float(abs(pred.sum() - c.sum()) / c.sum())})
    return rows


def speed(train: RoutingDataset, test: RoutingDataset) -> dict:
    """Fit time of the default pipeline (embedder included) and per-prompt predict/embed latency."""
    t0 = time.perf_counter()
    router = fit_router(train, DEFAULT_PREDICTOR)
    fit_s = time.perf_counter() - t0
    X = router.embedder.transform(test.prompts[:300])
    rows = [X[i:i + 1] for i in range(len(X))]
    it = iter(rows * 3)
    predict = timed(lambda: (router.quality.predict(x := next(it)), router.lengths.predict(x)), len(rows) * 3)
    it_p = iter(test.prompts[:300])
    embed = timed(lambda: router.embedder.transform([next(it_p)]), 300)
    it_e = iter(test.prompts[:300])
    estimate = timed(lambda: router.estimate([next(it_e)]), 300)
    baseline = fit_router(train, "prior")
    it_b = iter(test.prompts[:300])
    prior_estimate = timed(lambda: baseline.estimate([next(it_b)]), 300)
    return {"predictor": DEFAULT_PREDICTOR, "fit_s": fit_s, "n_train": len(train), "n_models": len(train.models),
            "predict_quality_and_length_one_prompt": percentiles_ms(predict),
            "embed_one_prompt": percentiles_ms(embed), "estimate_one_prompt": percentiles_ms(estimate),
            "prior_estimate_one_prompt": percentiles_ms(prior_estimate)}


def embedder_table(train: RoutingDataset, test: RoutingDataset) -> list[dict]:
    """The default embedder against simpler TF-IDF variants, with the k-NN and hybrid predictors."""
    ref_cost = float(np.nansum(test.cost[:, reference_column(train.quality)]))
    variants = {
        "words only, whole prompt": TfidfSvdEmbedder(tail_weight=0.0, char_ngrams=None),
        "words + chars, whole prompt": TfidfSvdEmbedder(tail_weight=0.0),
        "words + chars, tail-weighted, 64 dims": TfidfSvdEmbedder(dim=64),
        "words + chars, tail-weighted, 128 dims (default)": TfidfSvdEmbedder(),
        "words + chars, tail-weighted, 256 dims": TfidfSvdEmbedder(dim=256),
    }
    rows = []
    for label, embedder in variants.items():
        t0 = time.perf_counter()
        embedder.fit(train.prompts)
        fit_s = time.perf_counter() - t0
        row = {"embedder": label, "fit_s": fit_s}
        for name in ("knn", "hybrid"):
            row[f"audc_{name}"] = router_curve(fit_router(train, name, embedder=embedder), test, ref_cost).area()
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one unseen-model split, no embedder comparison")
    args = parser.parse_args()
    results: dict = {}

    rb = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = rb.subset("train"), rb.subset("test")
    embedder = TfidfSvdEmbedder().fit(train.prompts)

    rows, ref = audc_table(train, test, embedder)
    results["routerbench"] = {**ref, "rows": rows}
    _print_curves("RouterBench subset: fit on train (2,218), deferral curve on test (946)", rows)

    X = embedder.transform(train.prompts)
    results["hybrid_gamma_cv"] = choose_gamma(train, X, [0.0, 0.25, 0.5, 0.75, 1.0])
    g = results["hybrid_gamma_cv"]
    print_table("hybrid γ by 5-fold CV on the training split", ["γ", "CV AUDC", "± s.e.", "CV Brier"],
                list(zip(g["gammas"], g["cv_audc"], g["cv_audc_se"], g["cv_brier"], strict=False)))
    results["knn_k_cv"] = choose_k(train, X, [50, 100, 200, 400])
    kk = results["knn_k_cv"]
    print_table("k-NN k by 5-fold CV on the training split", ["k", "CV AUDC", "± s.e.", "CV Brier"],
                list(zip(kk["ks"], kk["cv_audc"], kk["cv_audc_se"], kk["cv_brier"], strict=False)))
    results["length_delta_cv"] = choose_delta(train, X, np.linspace(0, 1, 5))
    dl = results["length_delta_cv"]
    print_table("length blend δ by 5-fold CV on the training split", ["δ", "CV MAE of output cost (USD)"],
                list(zip(dl["deltas"], dl["cv_output_cost_mae_usd"], strict=False)))

    unseen = unseen_models(train, test, embedder, range(1 if args.quick else 5))
    results["unseen_models"] = unseen
    print_table("unseen models: fit on 7, add 4 with 400 profile prompts (AUDC on test)",
                ["seed", "predictor", "11 fitted", "7 + 4 added", "difference", "add s/model"],
                [[r["seed"], r["predictor"], r["audc_11_fit"], r["audc_7_fit_plus_4_added"], r["difference"],
                  r["add_candidate_s"]] for r in unseen])
    summary = []
    for name in UNSEEN_PREDICTORS:
        diffs = np.array([r["difference"] for r in unseen if r["predictor"] == name])
        summary.append([name, float(diffs.mean()), float(np.abs(diffs).max())])
    results["unseen_models_summary"] = [
        dict(zip(["predictor", "mean_difference", "max_abs_difference"], s, strict=False)) for s in summary
    ]
    print_table("unseen models over held-out splits", ["predictor", "mean difference", "max |difference|"], summary)

    router = fit_router(train, DEFAULT_PREDICTOR, embedder=embedder)
    cost_rows, total = cost_errors(router, test)
    results["cost_estimate"] = {"predictor": DEFAULT_PREDICTOR, "per_model": cost_rows, "summed_rel_error_all": total}
    print_table(f"pre-call cost estimate on test ({DEFAULT_PREDICTOR}; relative errors)",
                ["model", "median", "p90", "summed"],
                [[r["model"], r["median_rel_error"], r["p90_rel_error"], r["summed_rel_error"]] for r in cost_rows])
    print(f"summed estimate over all models and prompts: {total:.2%} off the summed actual cost")

    price_rows = learned_prices(train, test)
    results["learned_prices"] = price_rows
    print_table("prices learned from recorded costs, RouterBench without its price table",
                ["variant", "model", "in $/M", "out $/M", "true in", "true out", "train R²", "test median err",
                 "test summed err"],
                [[r["variant"], r["model"], r["learned_input"], r["learned_output"], r["true_input"], r["true_output"],
                  r["train_r2"], r["test_median_rel_error"], r["test_summed_rel_error"]] for r in price_rows])

    lr = load_dataset(DATA / "llmrouter_dcrouter.parquet", DATA / "llmrouter_dcrouter_prices.json")
    lr_train, lr_test = lr.subset("train"), lr.subset("test")
    lr_rows, lr_ref = audc_table(lr_train, lr_test, TfidfSvdEmbedder().fit(lr_train.prompts))
    results["llmrouter"] = {**lr_ref, "rows": lr_rows}
    _print_curves(f"LLMRouter (dcrouter): fit on train ({len(lr_train):,}), test ({len(lr_test)}), "
                  "costs from token counts and its price table", lr_rows)

    results["speed"] = speed(train, test)
    s = results["speed"]
    print_table(f"speed ({s['predictor']}, {s['n_models']} models, fit on {s['n_train']} prompts)",
                ["what", "p50 ms", "p90 ms", "p99 ms"],
                [[k, *s[k].values()] for k in ("predict_quality_and_length_one_prompt", "embed_one_prompt",
                                               "estimate_one_prompt", "prior_estimate_one_prompt")])
    print(f"fit_router (embedder + quality + lengths + warm start): {s['fit_s']:.1f} s")

    if not args.quick:
        results["embedders"] = embedder_table(train, test)
        print_table("embedder choice (RouterBench AUDC on test)", ["embedder", "fit s", "k-NN", "hybrid"],
                    [[r["embedder"], r["fit_s"], r["audc_knn"], r["audc_hybrid"]] for r in results["embedders"]])
    write_json("predictors", results)


def _print_curves(title: str, rows: list[dict]) -> None:
    print_table(title, ["router", "AUDC", "QNC", *[f"acc@{f:g}" for f in FRACTIONS], "fit s"],
                [[r["router"], r["audc"], "-" if r["qnc"] is None else r["qnc"],
                  *[r[f"acc@{f:g}"] for f in FRACTIONS], r.get("fit_s", "")] for r in rows])


if __name__ == "__main__":
    main()
