"""`omniroute fit DATA --out DIR`: fit a router on a routing dataset and save it (JSON + .npz)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data import load_dataset
from ..fitting import DEFAULT_PREDICTOR, PREDICTOR_NAMES, fit_router
from .outputs import check_output_dir
from .report import candidates_for, print_selection


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="fit a router on a routing dataset and save it",
        description=(
            "Fit the embedder, a quality predictor and the output-length predictor on the rows of DATA "
            "with split == --split (every row when DATA has no split column), and save the router to --out "
            "as router.json + arrays.npz (no pickle; load it with Router.load(DIR)). Candidates are priced "
            "from the dataset's price table (or --prices); a dataset with per-query costs but no prices gets "
            "prices learned from its costs."
        ),
    )
    p.add_argument("data", help="routing dataset (.parquet, .pkl, .csv, .jsonl)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the fitted router to")
    p.add_argument("--predictor", default=DEFAULT_PREDICTOR, choices=PREDICTOR_NAMES,
                   help=f"quality predictor (default: {DEFAULT_PREDICTOR}: chosen by 5-fold cross-validated AUDC "
                        "on the data)")
    p.add_argument("--prices", help="JSON price table: {model: [input, output], ...} in USD per 1M tokens")
    # None: not given, so a dataset without the split column may be fitted on every row.
    p.add_argument("--split", help="rows to fit on: the value of the split column (default: train; every row of "
                                   "a dataset without a split column)")
    p.add_argument("--split-column", help="column holding the split (default: split)")
    p.add_argument("--max-output-tokens", type=int, default=1024,
                   help="candidates' output limit, the worst case a request reserves (default: 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out")
    split = "train" if args.split is None else args.split
    column = "split" if args.split_column is None else args.split_column
    data = load_dataset(args.data, args.prices, split_column=column)
    if data.split_column is None:
        # Every row counts as "train" there: only a split or column other than the defaults is refused.
        if split != "train" or column != "split":
            raise ValueError(f"{args.data} has no split column {column!r}: name the column holding the split "
                             "with --split-column, or leave out --split and --split-column to fit on every row")
        rows = f"every row: no {column!r} column"
    else:
        data, rows = data.subset(split), f"split {split!r}"
    print(f"{Path(args.data).name}: {len(data)} prompts ({rows}) × {len(data.models)} models")
    candidates = candidates_for(data, max_output_tokens=args.max_output_tokens)
    start = time.perf_counter()
    router = fit_router(data, args.predictor, candidates=candidates, show_progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print_selection(router)
    manifest = router.save(args.out)
    print(f"fitted {args.predictor} in {seconds:.1f} s; saved to {manifest.parent} "
          f"({manifest.name} + arrays.npz); load with Router.load({str(manifest.parent)!r})")
    return 0
