"""`omniroute route ROUTER PROMPTS --budget USD`: plan a whole batch with a saved router.

OmniRouter's global problem from the command line: one model per prompt, the best total
predicted quality within the budget (or the least predicted cost at a mean quality target),
optional per-model capacities. Nothing is called and no ledger is touched: the plan is a CSV
for whoever runs the calls.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..router import Router


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "route", help="plan a batch of prompts under a budget with a saved router",
        description=(
            "Route every prompt of PROMPTS with the router saved in ROUTER (by `omniroute fit` or "
            "Router.save) through OmniRouter's Lagrangian dual: the best total predicted quality "
            "within --budget USD, or the least predicted cost with mean predicted quality >= "
            "--quality-target. Prints a summary; --out writes one row per prompt."
        ),
    )
    p.add_argument("router", metavar="ROUTER", help="directory of a saved router")
    p.add_argument("prompts", metavar="PROMPTS",
                   help="prompts: .jsonl (a string or an object with the prompt per line), .csv or .parquet")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget", type=float, metavar="USD", help="total predicted spend allowed")
    goal.add_argument("--quality-target", type=float, metavar="Q", help="mean predicted quality to reach")
    p.add_argument("--capacity", action="append", default=[], metavar="MODEL=LIMIT",
                   help="at most LIMIT of the prompts to MODEL: a share with a decimal point (0.1) or a count (100)")
    p.add_argument("--prompt-column", default="prompt", help="field or column holding the prompt (default: prompt)")
    p.add_argument("--id-column", default="id",
                   help="field or column naming each prompt in --out (default: id; else the row number)")
    p.add_argument("--out", metavar="FILE.csv", help="write id,model,predicted_quality,estimated_cost_usd per prompt")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.budget is not None and not args.budget > 0:
        raise ValueError(f"--budget must be > 0 USD, got {args.budget}")
    router = Router.load(args.router)
    ids, prompts = read_prompts(Path(args.prompts), args.prompt_column, args.id_column)
    start = time.perf_counter()
    plan = router.route_batch(prompts, budget=args.budget, quality_target=args.quality_target,
                              capacities=parse_capacities(args.capacity))
    seconds = time.perf_counter() - start
    est, solution = plan.estimate, plan.solution
    rows = np.arange(len(prompts))
    quality, cost = est.quality[rows, solution.choice], est.cost[rows, solution.choice]
    if args.out:
        write_plan(Path(args.out), zip(ids, plan.models, quality.round(6), cost.round(9), strict=False))
    _summary(est.candidates, solution.choice, cost, quality, solution.lam, args, seconds)
    return 0


def write_plan(out: Path, rows: Iterable[Sequence[object]]) -> None:
    """Write the plan CSV all or nothing: a temporary file beside `out`, renamed over it on success."""
    tmp = out.parent / f".{out.name}.{secrets.token_hex(8)}.tmp"
    # os.open with 0o666 leaves the permissions to the umask, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "model", "predicted_quality", "estimated_cost_usd"])
            writer.writerows(rows)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


#: csv's default field limit is 128 KiB; prompts can be longer. Raised to this, no further.
CSV_FIELD_LIMIT = 64 * 1024 * 1024


def _csv_records(path: Path) -> list[dict[str, str]]:
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, CSV_FIELD_LIMIT))
    try:
        # utf-8-sig: a byte order mark written by Excel is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except csv.Error as error:
        raise ValueError(f"{path}: not a readable CSV ({error})") from None
    finally:
        csv.field_size_limit(previous)


def _jsonl_records(path: Path, prompt_column: str) -> list[dict]:
    records = []
    text = path.read_text(encoding="utf-8-sig")
    # JSON Lines are separated by \n only: str.splitlines() would also split inside strings
    # holding U+2028, U+2029, U+0085 and other characters it treats as line breaks.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{n}: not JSON ({error.msg})") from None
        records.append(record if isinstance(record, dict) else {prompt_column: record})
    return records


def read_prompts(path: Path, prompt_column: str, id_column: str) -> tuple[list[str], list[str]]:
    """(ids, prompts) from a JSONL, CSV or Parquet file; ids are row numbers when there is no id column."""
    if not path.exists():
        raise FileNotFoundError(f"prompts file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records: list[dict] = _jsonl_records(path, prompt_column)
    elif suffix == ".csv":
        records = _csv_records(path)
    elif suffix == ".parquet":
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("reading Parquet needs pandas: pip install 'omniroute[data]'") from None
        records = pd.read_parquet(path).to_dict("records")
    else:
        raise ValueError(f"{path}: give prompts as .jsonl, .csv or .parquet")
    if not records:
        raise ValueError(f"{path} holds no prompts")
    prompts, ids = [], []
    for n, record in enumerate(records):
        prompt = record.get(prompt_column)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}: row {n} has no prompt text in {prompt_column!r} (got {prompt!r})")
        prompts.append(prompt)
        ids.append(str(record.get(id_column, n)))
    return ids, prompts


def parse_capacities(items: list[str]) -> dict[str, float | int]:
    """{model: share (float) or count (int)} from MODEL=LIMIT strings."""
    out: dict[str, float | int] = {}
    for item in items:
        model, sep, limit = item.rpartition("=")
        if not sep or not model:
            raise ValueError(f"--capacity takes MODEL=LIMIT, got {item!r}")
        try:
            out[model] = float(limit) if any(c in limit for c in ".eE") else int(limit)
        except ValueError:
            raise ValueError(f"--capacity {item!r}: LIMIT must be a share (0.1) or a count (100)") from None
    return out


def _summary(names: list[str], choice: np.ndarray, cost: np.ndarray, quality: np.ndarray, lam: float,
             args: argparse.Namespace, seconds: float) -> None:
    n = len(choice)
    counts = np.bincount(choice, minlength=len(names))
    spend = np.bincount(choice, weights=cost, minlength=len(names))
    name_w = max(24, *(len(m) for m in names))
    print(f"{'model':<{name_w}} {'prompts':>8} {'share':>7} {'est. spend $':>13}")
    print("-" * (name_w + 31))
    for j in np.argsort(-spend, kind="stable"):
        if counts[j]:
            print(f"{names[j]:<{name_w}} {counts[j]:>8} {counts[j] / n:>7.1%} {spend[j]:>13.4f}")
    print("-" * (name_w + 31))
    print(f"{'total':<{name_w}} {n:>8} {1:>7.0%} {cost.sum():>13.4f}")
    goal = (f"budget ${args.budget:.4f}" if args.budget is not None
            else f"mean predicted quality >= {args.quality_target:g}")
    print(f"\n{goal}: estimated spend ${cost.sum():.4f}, mean predicted quality {quality.mean():.4f}, "
          f"λ {lam:.4g} quality/$; {n} prompts routed in {seconds:.2f} s"
          + (f"; plan written to {args.out}" if args.out else ""))
