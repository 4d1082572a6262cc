"""`omniroute route ROUTER PROMPTS --budget USD`: plan a whole batch with a saved router.

OmniRouter's global problem from the command line: one model per prompt, the best total
predicted quality within the budget (or the least predicted cost at a mean quality target),
optional per-model capacities. Nothing is called and no ledger is touched: the plan is a CSV
for whoever runs the calls.

Files larger than memory are fine: the prompts are read and estimated a chunk at a time and only
the predicted quality and cost of every (prompt, candidate) pair are kept (about 17 bytes per pair)
for the one solve; a second pass over the file then writes the plan row by row.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import CHUNK_SIZE, EstimateCollector, solve_collected
from ..persist import ARRAYS, MANIFEST
from ..router import Router
from ..solver import capacity_counts
from .outputs import check_output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "route", help="plan a batch of prompts under a budget with a saved router",
        description=(
            "Route every prompt of PROMPTS with the router saved in ROUTER (by `omniroute fit` or "
            "Router.save) through OmniRouter's Lagrangian dual: the best total predicted quality "
            "within --budget USD, or the least predicted cost with mean predicted quality >= "
            "--quality-target. Prints a summary; --out writes one row per prompt. PROMPTS is read "
            "in chunks, so files larger than memory work; progress goes to stderr."
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
                   help="field or column naming each prompt in --out (default: id); a prompt without one "
                        "(no field, null or empty) is named by its row number")
    p.add_argument("--out", metavar="FILE.csv", help="write id,model,predicted_quality,estimated_cost_usd per prompt")
    p.add_argument("--no-progress", action="store_true", help="do not report progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.budget is not None and not args.budget > 0:
        raise ValueError(f"--budget must be > 0 USD, got {args.budget}")
    capacities = parse_capacities(args.capacity)
    if args.out is not None:
        saved = Path(args.router)
        check_output_file(args.out, "--out", inputs=[args.prompts, saved / MANIFEST, saved / ARRAYS], renamed=True)
    source = PromptFile(Path(args.prompts), args.prompt_column, args.id_column)
    router = Router.load(args.router)
    # Checked before hours of estimation, not after: a misspelt model or a bad share.
    capacity_counts(capacities, [c.name for c in router.candidates], 1)
    progress = Progress(enabled=not args.no_progress)
    start = time.perf_counter()
    collector = EstimateCollector(router, keep_all=False)
    with contextlib.closing(source.chunks(CHUNK_SIZE)) as chunks:
        for _, prompts in chunks:
            collector.add(prompts)
            rate = collector.n / max(time.perf_counter() - start, 1e-9)
            progress.update(f"estimated {collector.n:,} prompts ({source.fraction_read():.0%} of the file), "
                            f"{rate:,.0f} prompts/s")
    if not collector.n:
        raise ValueError(f"{source.path} holds no prompts")
    names = collector.candidates or []
    quality, cost, feasible = collector.arrays()
    progress.update(f"solving for {collector.n:,} prompts × {len(names)} candidates", force=True)
    solution = solve_collected(quality, cost, feasible, names, budget=args.budget,
                               quality_target=args.quality_target, capacities=capacities)
    seconds = time.perf_counter() - start
    rows = np.arange(collector.n)
    chosen_quality, chosen_cost = quality[rows, solution.choice], cost[rows, solution.choice]
    del quality, cost, feasible, rows  # the plan needs only the chosen pairs from here on
    if args.out is not None:
        with contextlib.closing(source.chunks(CHUNK_SIZE)) as again:
            write_plan(Path(args.out), _plan_rows(source, again, names, solution.choice, chosen_quality,
                                                  chosen_cost, progress))
    progress.done()
    _summary(names, solution.choice, chosen_cost, chosen_quality, solution.lam, args, seconds)
    return 0


def _plan_rows(source: PromptFile, chunks: Iterator[tuple[list[str], list[str]]], names: Sequence[str],
               choice: np.ndarray, quality: np.ndarray, cost: np.ndarray,
               progress: Progress) -> Iterator[tuple[object, ...]]:
    """The plan's rows, the ids read again from the file (the second pass), a chunk at a time."""
    n, done = len(choice), 0
    for ids, _ in chunks:
        hi = done + len(ids)
        if hi > n:
            break
        models = [names[j] for j in choice[done:hi].tolist()]
        yield from zip(ids, models, quality[done:hi].round(6).tolist(), cost[done:hi].round(9).tolist(),
                       strict=True)
        done = hi
        progress.update(f"wrote {done:,} of {n:,} plan rows")
    if done != n or source.changed():
        raise ValueError(f"{source.path} changed while it was being routed ({n} prompts at first); route it again")


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


class PromptFile:
    """(id, prompt) records of a JSONL, CSV or Parquet file, read a chunk at a time (each pass reads it anew).

    An id is the record's `id_column` value as text, else (no such field, null or empty) its row
    number (from 0, blank JSONL lines not counted). Raises FileNotFoundError for a missing file,
    ValueError for another suffix, and — while reading — ValueError for a prompt or id column
    that appears twice (CSV, Parquet) or naming the line (JSONL, CSV) or row (Parquet) of a
    record that is not JSON or has no prompt text.
    """

    def __init__(self, path: Path, prompt_column: str, id_column: str) -> None:
        if not path.exists():
            raise FileNotFoundError(f"prompts file not found: {path}")
        self.suffix = path.suffix.lower()
        if self.suffix not in (".jsonl", ".csv", ".parquet"):
            raise ValueError(f"{path}: give prompts as .jsonl, .csv or .parquet")
        self.path, self.prompt_column, self.id_column = path, prompt_column, id_column
        self._stamp = self._stat()
        self._done, self._total = 0, 1

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    def changed(self) -> bool:
        """Whether the file's size or modification time differs from when it was opened."""
        return self._stat() != self._stamp

    def fraction_read(self) -> float:
        """How much of the file the current pass has read, in [0, 1] (bytes; Parquet: rows)."""
        return min(1.0, self._done / max(self._total, 1))

    def chunks(self, size: int) -> Generator[tuple[list[str], list[str]], None, None]:
        """(ids, prompts) lists of up to `size` records each, in file order."""
        records = self.records()
        try:
            while chunk := list(itertools.islice(records, size)):
                yield [i for i, _ in chunk], [p for _, p in chunk]
        finally:
            records.close()

    def records(self) -> Generator[tuple[str, str], None, None]:
        """(id, prompt) per record, in file order."""
        self._done, self._total = 0, max(1, self._stamp[0])
        if self.suffix == ".parquet":
            yield from self._parquet()
            return
        raw = open(self.path, "rb")  # noqa: SIM115 - closed in the finally below, with the text layer
        # utf-8-sig: a byte order mark written by Excel is not part of the first field's name.
        # JSON Lines are separated by \n only (newline="\n"): universal newlines would also split
        # at a lone \r, which JSON strings cannot hold raw but CSV fields can.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="\n" if self.suffix == ".jsonl" else "")
        try:
            yield from (self._jsonl(text, raw) if self.suffix == ".jsonl" else self._csv(text, raw))
        finally:
            text.close()

    def _record(self, record: Any, n: int, where: str) -> tuple[str, str]:
        prompt = record.get(self.prompt_column)
        if not isinstance(prompt, str) or not prompt.strip():
            shown = repr(prompt)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            # A field of another name is the likely mistake when the record has no such field at all.
            fields = [str(k) for k in record] if hasattr(record, "keys") else []
            hint = (f"; its fields are {fields[:8]}: name the prompt's with --prompt-column"
                    if fields and self.prompt_column not in fields else "")
            raise ValueError(f"{where}: row {n} has no prompt text in {self.prompt_column!r} (got {shown}){hint}")
        ident = record.get(self.id_column)
        # A null or empty id is no id: the row number, as for a record without the field.
        return (str(n) if ident is None or not str(ident).strip() else str(ident)), prompt

    def _check_unique(self, header: Sequence[str]) -> None:
        # Readers keep one of two same-named columns without a word: which prompt, which id?
        for column in dict.fromkeys((self.prompt_column, self.id_column)):
            if (count := list(header).count(column)) > 1:
                raise ValueError(f"{self.path}: the column {column!r} appears {count} times; rename or remove "
                                 "all but one")

    def _jsonl(self, text: io.TextIOWrapper, raw: Any) -> Iterator[tuple[str, str]]:
        n = 0
        for line_no, line in enumerate(text, start=1):
            self._done = raw.tell()
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}:{line_no}: not JSON ({error.msg}, column {error.colno})") from None
            record = record if isinstance(record, dict) else {self.prompt_column: record}
            yield self._record(record, n, f"{self.path}:{line_no}")
            n += 1

    def _csv(self, text: io.TextIOWrapper, raw: Any) -> Iterator[tuple[str, str]]:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, CSV_FIELD_LIMIT))
        # strict: a stray quote is an error, not a field that swallows the rows up to the next quote.
        reader = csv.DictReader(text, strict=True)
        try:
            self._check_unique(reader.fieldnames or [])
            for n, record in enumerate(reader):
                self._done = raw.tell()
                yield self._record(record, n, f"{self.path}:{reader.line_num}")
        except csv.Error as error:
            # line_num is where the last whole record ended: the bad one starts after it.
            raise ValueError(f"{self.path}: not a readable CSV after line {reader.line_num} ({error}; "
                             "an unbalanced quote?)") from None
        finally:
            csv.field_size_limit(previous)

    def _parquet(self) -> Iterator[tuple[str, str]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError("reading Parquet needs pyarrow: pip install 'omniroute[data]'") from None
        with pq.ParquetFile(self.path) as f:
            self._total = max(1, f.metadata.num_rows)
            self._check_unique(f.schema_arrow.names)
            present = set(f.schema_arrow.names)
            columns = [c for c in dict.fromkeys((self.prompt_column, self.id_column)) if c in present]
            n = 0
            for batch in f.iter_batches(batch_size=CHUNK_SIZE, columns=columns):
                for record in batch.to_pylist():
                    yield self._record(record, n, str(self.path))
                    n += 1
                self._done = n


def read_prompts(path: Path, prompt_column: str, id_column: str) -> tuple[list[str], list[str]]:
    """(ids, prompts) of a JSONL, CSV or Parquet file, in memory; ids are row numbers without an id column."""
    records = list(PromptFile(path, prompt_column, id_column).records())
    if not records:
        raise ValueError(f"{path} holds no prompts")
    return [i for i, _ in records], [p for _, p in records]


class Progress:
    """Progress of long work on stderr: silent for the first second, then a line every few seconds
    (redrawn in place every 0.2 s on a terminal)."""

    def __init__(self, enabled: bool = True, stream: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.start = clock()
        self.last: float | None = None

    def update(self, message: str, force: bool = False) -> None:
        """Show `message` if the work has run a second and the last line is old enough (or `force`, after a second)."""
        now = self.clock()
        if not self.enabled or now - self.start < 1.0:
            return
        if not force and self.last is not None and now - self.last < (0.2 if self.tty else 5.0):
            return
        line = f"omniroute route: {message} [{now - self.start:.0f} s]"
        self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        self.stream.flush()
        self.last = now

    def done(self) -> None:
        """End a line redrawn in place."""
        if self.tty and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()


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
            print(f"{names[j]:<{name_w}} {counts[j]:>8} {counts[j] / n:>7.1%} {_usd(spend[j]):>13}")
    print("-" * (name_w + 31))
    print(f"{'total':<{name_w}} {n:>8} {1:>7.0%} {_usd(cost.sum()):>13}")
    goal = (f"budget ${_usd(args.budget)}" if args.budget is not None
            else f"mean predicted quality >= {args.quality_target:g}")
    print(f"\n{goal}: estimated spend ${_usd(cost.sum())}, mean predicted quality {quality.mean():.4f}, "
          f"λ {lam:.4g} quality/$; {n} prompts routed in {seconds:.2f} s"
          + (f"; plan written to {args.out}" if args.out else ""))


def _usd(amount: float) -> str:
    # Four decimals for any amount a batch could cost; a budget of 1e308 ("no limit") would be 300 digits.
    return f"{amount:.4f}" if abs(amount) < 1e9 else f"{amount:.6g}"
