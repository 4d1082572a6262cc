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
            "with split == --split, and save the router to --out as router.json + arrays.npz (no pickle; "
            "load it with Router.load(DIR)). Candidates are priced from the dataset's price table (or "
            "--prices); a dataset with per-query costs but no prices gets prices learned from its costs."
        ),
    )
    p.add_argument("data", help="routing dataset (.parquet, .pkl, .csv, .jsonl)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the fitted router to")
    p.add_argument("--predictor", default=DEFAULT_PREDICTOR, choices=PREDICTOR_NAMES,
                   help=f"quality predictor (default: {DEFAULT_PREDICTOR}: chosen by 5-fold cross-validated AUDC "
                        "on the data)")
    p.add_argument("--prices", help="JSON price table (USD per 1M input/output tokens)")
    p.add_argument("--split", default="train", help="rows to fit on: the value of the split column (default: train)")
    p.add_argument("--split-column", default="split", help="column holding the split (default: split)")
    p.add_argument("--max-output-tokens", type=int, default=1024,
                   help="candidates' output limit, the worst case a request reserves (default: 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out")
    data = load_dataset(args.data, args.prices, split_column=args.split_column).subset(args.split)
    print(f"{Path(args.data).name}: {len(data)} prompts (split {args.split!r}) × {len(data.models)} models")
    candidates = candidates_for(data, max_output_tokens=args.max_output_tokens)
    start = time.perf_counter()
    router = fit_router(data, args.predictor, candidates=candidates, show_progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print_selection(router)
    manifest = router.save(args.out)
    print(f"fitted {args.predictor} in {seconds:.1f} s; saved to {manifest.parent} "
          f"({manifest.name} + arrays.npz); load with Router.load({str(manifest.parent)!r})")
    return 0
