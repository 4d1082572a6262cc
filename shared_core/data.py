"""Routing datasets: per-prompt quality (and cost) of several models, RouterBench and LLMRouter layouts."""

from __future__ import annotations

import ast
import difflib
import io
import json
import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .candidates import Candidate
from .pricing import price_tokens
from .tokens import count_tokens_batch

__all__ = [
    "ROUTERBENCH_PRICES",
    "DEFAULT_ASSUMED_OUTPUT_TOKENS",
    "RoutingDataset",
    "load_dataset",
    "load_prices",
]

logger = logging.getLogger("omniroute")

#: RouterBench's prices, US dollars per million (input, output) tokens; its recorded
#: `total_cost` equals cl100k_base token counts of prompt and response times these.
ROUTERBENCH_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "claude-v2": (8.0, 24.0),
    "claude-v1": (8.0, 24.0),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "claude-instant-v1": (0.8, 2.4),
    "meta/llama-2-70b-chat": (0.9, 0.9),
    "zero-one-ai/Yi-34B-Chat": (0.8, 0.8),
    "meta/code-llama-instruct-34b-chat": (0.776, 0.776),
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "WizardLM/WizardLM-13B-V1.2": (0.3, 0.3),
    "mistralai/mistral-7b-chat": (0.2, 0.2),
}

#: Output tokens assumed per call when a dataset has a price table but no responses: a
#: short-answer benchmark's typical reply; pass `assumed_output_tokens=` to change it.
DEFAULT_ASSUMED_OUTPUT_TOKENS = 200

#: Columns that are never model columns; CSV reads them (and other non-numeric columns) as text.
_META_COLUMNS = {"sample_id", "id", "prompt", "eval_name", "task", "split", "oracle_model_to_route_to"}
_RESPONSE = "|model_response"
_COST = "|total_cost"


@dataclass(frozen=True)
class RoutingDataset:
    """Prompts × models: quality (NaN = missing), cost in USD (or None), responses, task, split."""

    prompts: list[str]
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray | None
    responses: list[list[str]] | None
    task: np.ndarray
    split: np.ndarray
    sample_ids: np.ndarray
    prices: dict[str, tuple[float, float]] | None = None
    source: str = ""
    #: The column `split` was read from; None when the data had none (every row is then "train").
    split_column: str | None = "split"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, mask: np.ndarray | str) -> RoutingDataset:
        """The rows where `mask` is true, or where `split == mask` when given a string."""
        if isinstance(mask, str):
            name = mask
            chosen: np.ndarray = self.split == name
            mask = chosen
            if not chosen.any():
                if self.split_column is None:
                    raise ValueError(f"{self.source or 'the dataset'} has no split column, so no rows with split == "
                                     f"{name!r}: every row counts as 'train'")
                raise ValueError(f"no rows with split == {name!r}; splits are {sorted(set(self.split))}")
        idx = np.flatnonzero(np.asarray(mask))
        return RoutingDataset(
            prompts=[self.prompts[i] for i in idx],
            models=list(self.models),
            quality=self.quality[idx],
            cost=None if self.cost is None else self.cost[idx],
            responses=None if self.responses is None else [self.responses[i] for i in idx],
            task=self.task[idx],
            split=self.split[idx],
            sample_ids=self.sample_ids[idx],
            prices=self.prices,
            source=self.source,
            split_column=self.split_column,
        )

    def prompt_tokens(self, encoding: str = "cl100k_base") -> np.ndarray:
        """Input token count of every prompt (cached)."""
        key = f"prompt_tokens:{encoding}"
        if key not in self._cache:
            self._cache[key] = np.asarray(count_tokens_batch(self.prompts, encoding), dtype=np.int64)
        return self._cache[key]

    def output_tokens(self, encoding: str = "cl100k_base") -> np.ndarray | None:
        """Output token count per (prompt, model) from the responses, or None without responses."""
        if self.responses is None:
            return None
        key = f"output_tokens:{encoding}"
        if key not in self._cache:
            n, m = len(self.prompts), len(self.models)
            flat = [self.responses[i][j] for i in range(n) for j in range(m)]
            counts = np.asarray(count_tokens_batch(flat, encoding), dtype=np.int64).reshape(n, m)
            self._cache[key] = counts
        return self._cache[key]

    def candidates(self, **overrides: Any) -> list[Candidate]:
        """A Candidate per model, priced from the dataset's price table."""
        if not self.prices:
            raise ValueError("this dataset has no price table; pass prices= to load_dataset")
        missing = [m for m in self.models if m not in self.prices]
        if missing:
            raise ValueError(f"no price for models {missing}")
        return [
            Candidate(name=m, input_price=self.prices[m][0], output_price=self.prices[m][1], **overrides)
            for m in self.models
        ]


#: The entry forms of a price table, as error messages and help texts show them.
PRICE_FORMS = '[input, output], {"input": .., "output": ..} or {"input_per_million": .., "output_per_million": ..}'


def load_prices(source: str | Path | Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """A price table {model: (input, output) USD per 1M tokens} from a JSON file or mapping.

    Accepted entry forms: ``[in, out]``, ``{"input": .., "output": ..}`` or
    ``{"input_per_million": .., "output_per_million": ..}``.
    """
    raw = json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else source
    if not isinstance(raw, Mapping):
        raise ValueError("a price table must map model names to prices")
    table: dict[str, tuple[float, float]] = {}
    for model, entry in raw.items():
        if isinstance(entry, Mapping):
            pin = entry.get("input_per_million", entry.get("input"))
            pout = entry.get("output_per_million", entry.get("output"))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            pin, pout = entry
        else:
            pin = pout = None
        try:
            pin_f, pout_f = float(pin), float(pout)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"price for {model!r} must be {PRICE_FORMS} (USD per 1M tokens), got {entry!r}") from None
        if not (math.isfinite(pin_f) and math.isfinite(pout_f)) or pin_f < 0 or pout_f < 0:
            raise ValueError(f"price for {model!r} must be finite and >= 0, got {entry!r}")
        table[str(model)] = (pin_f, pout_f)
    return table


def _as_text(value: Any) -> str:
    """RouterBench stores texts as the repr of a list of strings; join the items with one space."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(items, (list, tuple)):
            return " ".join(str(v) for v in items)
    return text


def _restore_validated_arrow_array(data: Any) -> Any:
    """pyarrow's own unpickling helper, then a full validation of the buffers it was given.

    `pyarrow.lib._restore_array` trusts the offsets and lengths in the pickle; a crafted file
    could point them outside the buffers, so the array is checked before pandas touches it.
    """
    from pyarrow.lib import _restore_array

    array = _restore_array(data)
    try:
        array.validate(full=True)
    except Exception as error:  # pyarrow.ArrowInvalid and friends
        raise pickle.UnpicklingError(f"refusing a malformed Arrow array in the pickle: {error}") from None
    return array


class _DataFrameOnlyUnpickler(pickle.Unpickler):
    """Rebuilds pandas DataFrames and NumPy arrays; refuses every other global (no code runs)."""

    _NUMPY = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }
    _PANDAS_NAMES = {
        "DataFrame", "Series", "BlockManager", "SingleBlockManager", "Index", "RangeIndex",
        "_new_Index", "new_block", "_unpickle_block", "ObjectBlock", "FloatBlock", "IntBlock",
        "NumpyBlock", "Block", "BoolBlock", "_new_DatetimeIndex", "StringDtype", "Int64Index",
        "Float64Index",
        # pandas 3 stores str columns (and a str column Index) as Arrow-backed string arrays.
        "ArrowStringArray",
    }
    _BUILTINS = {("builtins", "slice"), ("builtins", "object"), ("functools", "partial"),
                 ("copyreg", "_reconstructor"), ("builtins", "complex"),
                 # pickle protocols < 5 carry pyarrow's buffers as bytearrays.
                 ("builtins", "bytearray")}
    #: What pyarrow's Array.__reduce__ refers to: a type from its alias ("large_string"), a
    #: buffer wrapping pickled bytes, and the array rebuilt from them (validated, see above).
    _PYARROW = {("pyarrow.lib", "type_for_alias"), ("pyarrow.lib", "py_buffer")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("pyarrow.lib", "_restore_array"):
            return _restore_validated_arrow_array
        allowed = (
            (module, name) in self._NUMPY
            or (module, name) in self._BUILTINS
            or (module, name) in self._PYARROW
            or (module.split(".")[0] == "pandas" and name in self._PANDAS_NAMES)
        )
        if not allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a pickle: only pandas DataFrames of plain "
                "values are read. Convert the file with `pandas.read_pickle(path).to_parquet(out)` "
                "in a trusted environment and load the Parquet file instead."
            )
        return super().find_class(module, name)


def _is_text_column(name: str, split_column: str) -> bool:
    """Columns that hold text or ids whatever they look like: never parsed as numbers."""
    if name.endswith(_COST):
        return False
    return name in _META_COLUMNS or name == split_column or "|" in name or _is_written_index(name)


def _is_written_index(name: str) -> bool:
    """The column pandas names "Unnamed: 0" when it reads back a frame written with its index (to_csv's default)."""
    return name.startswith("Unnamed: ") and name[len("Unnamed: "):].isdigit()


def _numbers_where_numeric(frame: Any, split_column: str) -> Any:
    """A CSV read as all-strings, with each numeric-looking non-text column parsed as numbers.

    A column becomes numeric when every non-blank cell parses as a number (or is "nan", as
    NumPy writes a missing value); blank and "nan" cells then become NaN (missing). A column of
    only true/false cells becomes boolean. Any other column keeps its cells exactly as written.
    """
    import pandas as pd

    for column in frame.columns:
        name = str(column)
        if _is_text_column(name, split_column):
            continue
        cells = frame[column]
        folded = cells.str.strip().str.lower()
        blank = folded.isin(["", "nan"])
        if len(cells) and folded.isin(["true", "false"]).all():
            frame[column] = (folded == "true").astype(bool)
            continue
        try:
            numbers = pd.to_numeric(cells[~blank], errors="raise")
        except (ValueError, TypeError):
            if name.endswith(_COST):
                raise ValueError(f"column {name!r} holds values that are not numbers") from None
            continue
        if blank.any():
            numbers = numbers.astype(np.float64).reindex(cells.index)
        frame[column] = numbers
    return frame


def _read_frame(path: Path, split_column: str = "split") -> Any:
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading datasets needs pandas and pyarrow: pip install 'omniroute[data]'") from e
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in {".pkl", ".pickle"}:
        with path.open("rb") as f:
            frame = _DataFrameOnlyUnpickler(io.BufferedReader(f)).load()  # type: ignore[arg-type]
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{path} holds a {type(frame).__name__}, not a pandas DataFrame")
        return frame
    if suffix == ".csv":
        # Every cell as written ("NA", "None", "007" stay text); numbers are parsed per column.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
        return _numbers_where_numeric(frame, split_column)
    if suffix in {".jsonl", ".json"}:
        # JSON's own types: strings stay strings, numbers numbers, null missing; no guessing.
        return pd.read_json(path, lines=suffix == ".jsonl", dtype=False, encoding="utf-8-sig")
    raise ValueError(f"unsupported dataset format {suffix!r} for {path}: use .parquet, .pkl, .csv or .jsonl")


def load_dataset(
    path: str | Path,
    prices: str | Path | Mapping[str, Any] | None = None,
    *,
    assumed_output_tokens: int = DEFAULT_ASSUMED_OUTPUT_TOKENS,
    split_column: str = "split",
) -> RoutingDataset:
    """Load a routing dataset (RouterBench wide layout, or LLMRouter layout with a price table).

    The LLMRouter layout: a `prompt` column, one numeric column of quality labels per model (NaN
    or blank: unknown), and optionally `split`, `task` or `eval_name`, `id` / `sample_id`; every
    other numeric column is taken for a model, except the index pandas writes by default
    ("Unnamed: 0").

    Cost: RouterBench's per-query `total_cost` when present; otherwise, with `prices`, the
    prompt's cl100k_base token count times the input price plus `assumed_output_tokens` (or the
    response's token count, when responses exist) times the output price; otherwise None.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    frame = _read_frame(path, split_column)
    if "prompt" not in frame.columns:
        raise ValueError(f"{path}: no 'prompt' column; columns are {list(frame.columns)[:12]}")
    columns = [str(c) for c in frame.columns]
    wide = [c[: -len(_COST)] for c in columns if c.endswith(_COST)]
    if wide:
        models = [m for m in wide if m in frame.columns]
    else:
        models = [
            c for c in columns
            if not _is_text_column(c, split_column) and frame[c].dtype.kind in "fiub"
        ]
    if not models:
        raise ValueError(f"{path}: found no model columns")

    n = len(frame)
    prompts = [_as_text(p) for p in frame["prompt"].tolist()]
    empty = sum(not p for p in prompts)
    if empty:
        logger.warning("%s: %d of %d rows have no prompt (null or empty); they are kept as empty texts",
                       path, empty, n)
    quality = frame[models].to_numpy(dtype=np.float64, na_value=np.nan)
    responses = None
    if all(f"{m}{_RESPONSE}" in frame.columns for m in models):
        cols = [[_as_text(v) for v in frame[f"{m}{_RESPONSE}"].tolist()] for m in models]
        responses = [[cols[j][i] for j in range(len(models))] for i in range(n)]
    task_col = "eval_name" if "eval_name" in frame.columns else ("task" if "task" in frame.columns else None)
    task = np.asarray(frame[task_col].astype(str).tolist() if task_col else [""] * n, dtype=object)
    split = np.asarray(
        frame[split_column].astype(str).tolist() if split_column in frame.columns else ["train"] * n,
        dtype=object,
    )
    if "sample_id" in frame.columns:
        sample_ids = np.asarray(frame["sample_id"].astype(str).tolist(), dtype=object)
    else:
        sample_ids = np.asarray([f"{path.stem}.{i}" for i in range(n)], dtype=object)

    table = load_prices(prices) if prices is not None else None
    if table is None and wide and all(m in ROUTERBENCH_PRICES for m in models):
        table = dict(ROUTERBENCH_PRICES)

    dataset = RoutingDataset(
        prompts=prompts, models=models, quality=quality, cost=None, responses=responses,
        task=task, split=split, sample_ids=sample_ids, prices=table, source=str(path),
        split_column=split_column if split_column in frame.columns else None,
    )
    if wide:
        cost = frame[[f"{m}{_COST}" for m in models]].to_numpy(dtype=np.float64, na_value=np.nan)
    elif table is not None:
        missing = [m for m in models if m not in table]
        if missing:
            unknown = sorted(set(table) - set(models))
            near = {m: close[0] for m in missing if (close := difflib.get_close_matches(m, unknown, n=1))}
            hint = "; ".join(f"{m!r}: is its entry {e!r}?" for m, e in near.items())
            raise ValueError(f"price table has no entry for models {missing}" + (f" ({hint})" if hint else "")
                             + " (every numeric column other than the id, task and split columns is a model)")
        p_in = np.array([table[m][0] for m in models])
        p_out = np.array([table[m][1] for m in models])
        inp = dataset.prompt_tokens()[:, None].astype(np.float64)
        out = dataset.output_tokens()
        out_f = np.full((n, len(models)), float(assumed_output_tokens)) if out is None else out.astype(float)
        cost = price_tokens(inp, out_f, p_in, p_out)
    else:
        cost = None
    object.__setattr__(dataset, "cost", cost)
    return dataset
