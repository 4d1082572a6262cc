"""Fitting with BLAS on one thread (`quality.base.serial_blas`) against BLAS's own thread count.

`fit_router(train, "auto")` on RouterBench's training split (2,218 prompts × 11 models; the
embedder, the 14-spec × 5-fold cross-validation, the chosen predictor, the length predictor and
the warm start), and the learned-map and logistic predictors alone on the same embeddings, each
timed with `serial_blas` as shipped and with it replaced by a no-op (OpenBLAS then uses every
core), the two interleaved in alternating order over `--rounds` rounds in one process. Reported:
the median seconds of each and their ratio, and the largest difference between the two fits'
predictions on the test split (thread count changes the order of BLAS's sums, not the model).

Run: python benchmarks/fit_threads.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
from _common import DATA, print_table, write_json
from threadpoolctl import threadpool_info

from shared_core import selection
from shared_core.data import load_dataset
from shared_core.fitting import AUTO, fit_router
from shared_core.quality import LearnedMapQuality, LogisticQuality, learned_map, parametric

# Every module that enters serial_blas by name.
_USERS = (learned_map, parametric, selection)


@contextlib.contextmanager
def blas_threads(serial: bool) -> Iterator[None]:
    """serial_blas as shipped (serial=True), or a no-op in its place."""
    saved = [m.serial_blas for m in _USERS]
    if not serial:
        for m in _USERS:
            m.serial_blas = contextlib.nullcontext
    try:
        yield
    finally:
        for m, original in zip(_USERS, saved, strict=True):
            m.serial_blas = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = load_dataset(DATA / "routerbench_subset.parquet")
    train, test = data.subset("train"), data.subset("test")
    embedder = fit_router(train, "knn", warm_start=False).embedder
    X, Xt = embedder.transform(train.prompts), embedder.transform(test.prompts)

    jobs: dict[str, Callable[[], np.ndarray]] = {
        "fit_router(train, auto)": lambda: fit_router(train, AUTO).estimate(test.prompts).quality,
        "LearnedMapQuality.fit": lambda: LearnedMapQuality().fit(X, train.quality, train.models).predict(Xt),
        "LogisticQuality.fit": lambda: LogisticQuality().fit(X, train.quality, train.models).predict(Xt),
    }
    seconds: dict[tuple[str, bool], list[float]] = {(j, s): [] for j in jobs for s in (True, False)}
    predictions: dict[tuple[str, bool], np.ndarray] = {}
    for r in range(args.rounds):
        for name, job in jobs.items():
            for serial in ((True, False) if r % 2 == 0 else (False, True)):
                with blas_threads(serial):
                    start = time.perf_counter()
                    predictions[name, serial] = job()
                    seconds[name, serial].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    threads = max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1)
    rows, results = [], {}
    for name in jobs:
        one, many = float(np.median(seconds[name, True])), float(np.median(seconds[name, False]))
        diff = float(np.nanmax(np.abs(predictions[name, True] - predictions[name, False])))
        rows.append([name, round(many, 2), round(one, 2), round(one / many, 2), f"{diff:.1e}"])
        results[name] = {"blas_threads_s": seconds[name, False], "serial_s": seconds[name, True],
                         "ratio": one / many, "max_prediction_difference": diff}
    print_table(f"Fits, median of {args.rounds} interleaved rounds (BLAS threads by default: {threads})",
                ["fit", "BLAS threads s", "one thread s", "one ÷ threads", "max |Δ prediction|"], rows)
    write_json("fit_threads", {"rounds": args.rounds, "blas_threads": threads, "results": results})


if __name__ == "__main__":
    main()
