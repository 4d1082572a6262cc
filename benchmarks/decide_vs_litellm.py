"""The per-request decision against LiteLLM's, and how its cost scales with candidates and feedback (issue 17).

1. 11 candidates. `Router.decide` of the default router (`fit_router(train, DEFAULT_PREDICTOR)` on
   the RouterBench train split, output caps 1,024) for each RouterBench test prompt, as chat
   messages, in a budgeted session on a memory ledger (so the reservation is included), each
   decision released untimed — beside `litellm.Router.select` (the pick without the call; the
   deprecated `async_get_available_deployment` is the same pick) with
   `routing_strategy="cost-based-routing"` over 11 deployments mirroring the candidates (their
   per-token input/output prices, fake api_base/api_key) on the same messages, and
   `"simple-shuffle"` for reference. The script checks that LiteLLM really ran its cost-based
   strategy (its `LowestCostLoggingHandler` picked the cheapest deployment) and that nothing
   opened a network connection (sockets are blocked and counted while LiteLLM is loaded and timed).
2. 200 candidates: the 11-candidate router beside a copy with 189 synthetic models added by
   profile (`Router.add_candidate` on 200 training prompts; labels from an existing model's
   column with 5-30 % of them flipped, output lengths scaled, prices scaled log-normally), and,
   for reference, a router refitted (same predictor spec) on the 200-model training set the
   synthetic columns come from.
3. `Router.feedback` per call as feedback accumulates (0, 10k, 100k, 200k rows, filled in bulk
   through the predictor's `observe`, as single feedback calls would), with the default
   `max_feedback` (10,000) and a raised one (1,000,000, so the label memory grows); the slowest
   call of each run, the call whose append doubles the memory's buffer, and decide p50 at each level.

Every comparison interleaves its configurations in rounds over the same block of prompts (the
order alternating between rounds) and reports the p50 of all calls, the ratio of the p50s, and
the min/max of the per-round p50 ratios.

Targets: decide p50 (11) ÷ LiteLLM cost-based p50 ≤ 0.5; decide p50 (200 by profile) ÷ decide
p50 (11) ≤ 2.5; feedback per call flat as its rows grow.

The fitted routers are cached (saved with `Router.save`) in the system temp directory under a key
hashing shared_core's source and the dataset, so a code change refits; `--no-cache` always refits.

`--quick` (under 3 minutes after the fit): 344 prompts (150 for the 200-candidate rounds), 300
feedback calls per level, levels up to 100k. `--profile` adds cProfile (top 15 by tottime) of
200 decides with 11 candidates and 50 with 200.

The compiled kernels (shared_core/native.py) are used when built; `OMNIROUTE_KERNELS=0` times the
NumPy code instead (the report says which ran).

Run: python benchmarks/decide_vs_litellm.py [--quick] [--profile] [--no-cache]
     (needs LiteLLM: pip install 'omniroute[bench]')
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import pstats
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import DATA, ROOT, percentiles_ms, print_table, write_json

from shared_core import Budget, Candidate, Router
from shared_core.data import RoutingDataset, load_dataset
from shared_core.evaluate import reference_column
from shared_core.fitting import DEFAULT_PREDICTOR, fit_router, output_lengths
from shared_core.selection import BASELINE, PredictorSpec

# LiteLLM fetches its model cost map from GitHub when imported unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SESSION = "bench"
GROUP = "omniroute-bench"  # the one LiteLLM model group every mirrored deployment belongs to
EXTRA_MODELS = 189  # 11 + 189 = 200 candidates
PROFILE_PROMPTS = 200
MAX_OUTPUT_TOKENS = 1024
RAISED_MAX_FEEDBACK = 1_000_000
SEED = 17

Requests = Sequence[list[dict[str, str]]]  # chat requests, one list of messages each
Timer = Callable[[Requests], list[float]]  # times one call per request, in seconds


# ----------------------------------------------------------------- no network
class NetworkAttempt(RuntimeError):
    """Raised inside the benchmark when anything tries to open a network connection."""


@contextlib.contextmanager
def no_network(attempts: list[str]) -> Iterator[None]:
    """Refuse (and record in `attempts`) every connection and DNS lookup; Unix sockets stay allowed."""
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refuse(what: str) -> NetworkAttempt:
        attempts.append(what)
        return NetworkAttempt(f"the benchmark blocks the network: {what}")

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX:
            return connect(self, address)
        raise refuse(f"connect {address!r}")

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if self.family == socket.AF_UNIX:
            return connect_ex(self, address)
        raise refuse(f"connect {address!r}")

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse(f"getaddrinfo {host!r}")

    socket.socket.connect = guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = getaddrinfo


def import_litellm() -> Any:
    """LiteLLM, or SystemExit saying how to install it."""
    try:
        import litellm
    except ImportError as error:
        raise SystemExit(
            f"this benchmark compares with LiteLLM, which is not installed ({error}): pip install 'omniroute[bench]'"
        ) from error
    return litellm


# ----------------------------------------------------------------- interleaved timing
def messages_of(prompt: str) -> list[dict[str, str]]:
    """The chat request both routers are given for a prompt."""
    return [{"role": "user", "content": prompt}]


def time_decides(router: Router, requests: Requests) -> list[float]:
    """Seconds of each `Router.decide` (reservation included); each decision is released untimed."""
    out = []
    for messages in requests:
        start = time.perf_counter()
        decision = router.decide(messages, SESSION)
        out.append(time.perf_counter() - start)
        router.release(decision)
    return out


async def _time_picks(router: Any, requests: Requests) -> list[float]:
    out = []
    for messages in requests:
        start = time.perf_counter()
        await router.select(GROUP, {}, messages=messages)
        out.append(time.perf_counter() - start)
    return out


def litellm_timer(router: Any, loop: asyncio.AbstractEventLoop) -> Timer:
    """Times LiteLLM's pick per request: the await of `Router.select` alone, on a running loop."""
    return lambda requests: loop.run_until_complete(_time_picks(router, requests))


def interleave(
    configs: dict[str, Timer],
    requests: Requests, block: int,
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Every config on each block of requests in turn (order reversed every other round): all
    durations per config, and each round's p50 per config (seconds)."""
    names = list(configs)
    durations: dict[str, list[float]] = {name: [] for name in names}
    rounds = []
    for r, start in enumerate(range(0, len(requests), block)):
        chunk = requests[start:start + block]
        p50 = {}
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds = configs[name](chunk)
            durations[name].extend(seconds)
            p50[name] = float(np.median(seconds))
        rounds.append(p50)
    return durations, rounds


def compare(durations: dict[str, list[float]], rounds: list[dict[str, float]], base: str) -> list[dict[str, Any]]:
    """Per config: percentiles (ms), and against `base` the ratio of p50s and the min/max per-round ratio."""
    base_p50 = float(np.median(durations[base]))
    rows = []
    for name, seconds in durations.items():
        ratios = [r[name] / r[base] for r in rounds]
        rows.append({"config": name, "calls": len(seconds), **percentiles_ms(seconds),
                     "p50_ratio": float(np.median(seconds)) / base_p50,
                     "round_ratio_min": min(ratios), "round_ratio_max": max(ratios)})
    return rows


def comparison_table(title: str, rows: list[dict[str, Any]], base: str) -> None:
    print_table(title, ["config", "calls", "p50 ms", "p90 ms", "p99 ms", f"p50 ÷ {base}", "per-round min", "max"],
                [[r["config"], r["calls"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["p50_ratio"],
                  r["round_ratio_min"], r["round_ratio_max"]] for r in rows])


# ----------------------------------------------------------------- routers (fitted once, cached)
def cache_dir(dataset_path: Path) -> Path:
    """Where the fitted routers are cached: keyed by a hash of shared_core's source (ledger stores
    aside: they change nothing fitted), the dataset file and the settings, so a code change refits."""
    digest = hashlib.sha256(f"{DEFAULT_PREDICTOR}|{MAX_OUTPUT_TOKENS}|{EXTRA_MODELS}|{SEED}".encode())
    source = ROOT / "shared_core"
    for path in sorted(source.rglob("*.py")):
        if path.relative_to(source).parts[0] != "stores":
            digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    stat = dataset_path.stat()
    digest.update(f"{dataset_path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return Path(tempfile.gettempdir()) / "omniroute-bench" / f"decide_vs_litellm-{digest.hexdigest()[:16]}"


def spec_of(router: Router) -> PredictorSpec:
    """The predictor spec `auto` chose (the baseline when the predictor does not say)."""
    selection = getattr(router.quality, "selection_", None)
    return selection.best if selection is not None else BASELINE


def synthetic_models(train: RoutingDataset, candidates: Sequence[Candidate], rng: np.random.Generator) -> tuple[
        list[Candidate], np.ndarray, np.ndarray]:
    """EXTRA_MODELS candidates derived from the real ones, with their (n, EXTRA_MODELS) quality and output tokens
    on the training prompts: each copies a real model's labels with 5-30 % flipped, scales its
    output lengths, and prices it log-normally around the real model's prices."""
    real_lengths = output_lengths(train, {c.name: (c.input_price, c.output_price) for c in candidates})
    if real_lengths is None:
        raise ValueError("the training set has neither responses nor costs to take output lengths from")
    n = len(train)
    quality, lengths, extra = np.empty((n, EXTRA_MODELS)), np.empty((n, EXTRA_MODELS)), []
    for i in range(EXTRA_MODELS):
        j = i % len(candidates)
        base = candidates[j]
        labels = train.quality[:, j].copy()
        missing = np.isnan(labels)
        labels[missing] = rng.integers(0, 2, missing.sum())
        flip = rng.random(n) < rng.uniform(0.05, 0.30)
        quality[:, i] = np.where(flip, 1.0 - labels, labels)
        col = real_lengths[:, j]
        col = np.where(np.isfinite(col), col, np.nanmedian(col))
        lengths[:, i] = np.maximum(1.0, np.round(col * rng.uniform(0.6, 1.5) * rng.lognormal(0.0, 0.2, n)))
        scale = float(rng.lognormal(0.0, 0.6))
        extra.append(Candidate(**{**base.model_dump(), "name": f"synthetic-{i:03d}-{base.name.split('/')[-1]}",
                                  "input_price": round(max(0.01, base.input_price * scale), 4),
                                  "output_price": round(max(0.01, base.output_price * scale), 4)}))
    return extra, quality, lengths


def wide_dataset(train: RoutingDataset, extra: Sequence[Candidate], quality: np.ndarray,
                 lengths: np.ndarray) -> RoutingDataset:
    """The training set with the synthetic models as columns; their costs imply `lengths` at their prices."""
    inp = train.prompt_tokens().astype(np.float64)[:, None]
    p_in = np.array([c.input_price for c in extra]) / 1e6
    p_out = np.array([c.output_price for c in extra]) / 1e6
    if train.cost is None:
        raise ValueError("the training set records no costs for the synthetic models to join")
    return dataclasses.replace(
        train, models=[*train.models, *(c.name for c in extra)],
        quality=np.hstack([train.quality, quality]), cost=np.hstack([train.cost, inp * p_in + lengths * p_out]),
        responses=None, prices={**(train.prices or {}), **{c.name: (c.input_price, c.output_price) for c in extra}},
        _cache={},
    )


def routers(train: RoutingDataset, directory: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Directories of the saved default router and of the 200-model refit in `directory`, fitting
    them unless a finished fit is there; and what the fit reported."""
    meta_path = directory / "bench-meta.json"  # written last: its presence marks a finished fit
    if meta_path.exists():
        print(f"routers loaded from {directory} (fitted by an earlier run of this code; --no-cache refits)")
        return directory / "default", directory / "refit200", json.loads(meta_path.read_text())
    shutil.rmtree(directory, ignore_errors=True)  # a fit that did not finish
    directory.mkdir(parents=True)
    candidates = train.candidates(max_output_tokens=MAX_OUTPUT_TOKENS)
    print(f"fitting the default router ({DEFAULT_PREDICTOR}) on {len(train)} training prompts ...", flush=True)
    start = time.perf_counter()
    default = fit_router(train, DEFAULT_PREDICTOR, candidates=candidates)
    fit_s = time.perf_counter() - start
    spec = spec_of(default)
    default.save(directory / "default")
    extra, quality, lengths = synthetic_models(train, candidates, np.random.default_rng(SEED))
    wide = wide_dataset(train, extra, quality, lengths)
    print(f"fitting {spec.label} on {len(train)} prompts × {len(wide.models)} models (reference) ...", flush=True)
    start = time.perf_counter()
    fit_router(wide, spec, candidates=[*candidates, *extra]).save(directory / "refit200")
    meta = {"predictor": DEFAULT_PREDICTOR, "chosen": {"kind": spec.kind, "params": dict(spec.params)},
            "fit_default_s": fit_s, "fit_refit200_s": time.perf_counter() - start}
    meta_path.write_text(json.dumps(meta, indent=2))
    return directory / "default", directory / "refit200", meta


def budgeted(router: Router, train: RoutingDataset, test: RoutingDataset) -> Router:
    """The router with a budgeted session (a quarter of the reference model's test cost, ten times
    over: it never runs out, since every hold is released) and warm caches."""
    ref = reference_column(train.quality)
    budget = 0.25 * float(test.cost[:, ref].sum()) if test.cost is not None else 10.0
    router.set_budget(SESSION, Budget(usd=10 * budget, horizon=10 * len(test)))
    time_decides(router, [messages_of(p) for p in train.prompts[:20]])  # encodings, BLAS, memos
    return router


def add_synthetic(router: Router, train: RoutingDataset, rng: np.random.Generator) -> float:
    """Add the EXTRA_MODELS synthetic models by profile (PROFILE_PROMPTS training prompts); seconds it took."""
    candidates = list(router.candidates)
    extra, quality, lengths = synthetic_models(train, candidates, np.random.default_rng(SEED))
    rows = np.sort(rng.choice(len(train), PROFILE_PROMPTS, replace=False))
    prompts = [train.prompts[i] for i in rows]
    start = time.perf_counter()
    for i, candidate in enumerate(extra):
        router.add_candidate(candidate, prompts, quality[rows, i], profile_output_tokens=lengths[rows, i])
    return time.perf_counter() - start


# ----------------------------------------------------------------- LiteLLM
def litellm_router(litellm: Any, candidates: Sequence[Candidate], strategy: str) -> Any:
    """A litellm.Router with one deployment per candidate in one model group, priced per token like it."""
    deployments = []
    for c in candidates:
        prices = {"input_cost_per_token": c.input_price / 1e6, "output_cost_per_token": c.output_price / 1e6}
        cache = {"cache_read_input_token_cost": (c.cache_read_price if c.cache_read_price is not None
                                                 else c.input_price) / 1e6,
                 "cache_creation_input_token_cost": (c.cache_write_price if c.cache_write_price is not None
                                                     else c.input_price) / 1e6}
        deployments.append({
            "model_name": GROUP,
            # An unroutable address and a fake key: only the pick is timed, never a call.
            "litellm_params": {"model": f"openai/{c.name}", "api_base": "http://192.0.2.1/v1",
                               "api_key": "sk-not-used", **prices},
            "model_info": {"id": c.name, "max_tokens": c.max_output_tokens, "max_input_tokens": c.context_window,
                           **prices, **cache},
        })
    return litellm.Router(model_list=deployments, routing_strategy=strategy)


def check_cost_based(router: Any, candidates: Sequence[Candidate], loop: asyncio.AbstractEventLoop,
                     requests: Requests) -> str:
    """Make sure the picks come from LiteLLM's cost-based strategy and are the cheapest deployment; its pick."""
    from litellm.router_strategy.lowest_cost import LowestCostLoggingHandler

    ran = []
    original = LowestCostLoggingHandler.async_get_available_deployments

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(1)
        return await original(self, *args, **kwargs)

    LowestCostLoggingHandler.async_get_available_deployments = counted  # type: ignore[method-assign]
    try:
        picks = [loop.run_until_complete(router.select(GROUP, {}, messages=m)) for m in requests]
    finally:
        LowestCostLoggingHandler.async_get_available_deployments = original  # type: ignore[method-assign]
    if len(ran) != len(requests):
        raise RuntimeError(f"LiteLLM's cost-based strategy ran {len(ran)} times for {len(requests)} picks: "
                           "the comparison would not time what it says")
    # LiteLLM's rule: the least input + output price per token among deployments within their limits.
    cheapest = min(candidates, key=lambda c: c.input_price + c.output_price).name
    chosen = {p["model_info"]["id"] for p in picks}
    if chosen != {cheapest}:
        raise RuntimeError(f"LiteLLM's cost-based pick was {sorted(chosen)}, not the cheapest {cheapest!r}")
    return cheapest


# ----------------------------------------------------------------- feedback
def feedback_levels(router: Router, decisions: Sequence[Any], levels: Sequence[int], calls: int,
                    decide_requests: Requests, X_fill: np.ndarray,
                    rng: np.random.Generator) -> list[dict[str, Any]]:
    """Per level of accumulated feedback rows: the time of `calls` single `Router.feedback` calls and
    of a few decides. Rows up to each level are filled in bulk through the predictor's `observe`."""
    quality = router.quality
    names = [c.name for c in router.candidates]
    given, out = 0, []
    for level in levels:
        while given < level:  # the state single feedback calls would leave, reached in bulk
            n = min(10_000, level - given)
            rows = rng.integers(0, len(X_fill), n)
            quality.observe(X_fill[rows], names[given // 10_000 % len(names)], rng.integers(0, 2, n).astype(float))
            given += n
        rows_before, seconds = remembered(quality), []
        for i in range(calls):
            decision = decisions[i % len(decisions)]
            start = time.perf_counter()
            router.feedback(decision, float(i % 2))
            seconds.append(time.perf_counter() - start)
        given += calls
        decide = time_decides(router, decide_requests)
        out.append({"feedback_rows": level, "memory_rows": rows_before, "calls": calls,
                    **percentiles_ms(seconds), "max_ms": 1e3 * max(seconds),
                    "decide_p50_ms": percentiles_ms(decide)["p50_ms"]})
    return out


def remembered(quality: Any) -> int | None:
    """Rows in the predictor's label memory (None when it does not expose one)."""
    memory = getattr(quality, "memory_", None)
    return None if memory is None else len(memory.X)


def doubling_stall(router: Router, decision: Any, X_fill: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The feedback call whose append doubles the label memory's buffer: fill it to capacity in bulk,
    then time one call. Read from LabelMemory's buffer; empty when the predictor keeps none."""
    memory = getattr(router.quality, "memory_", None)
    buffer = getattr(getattr(memory, "_snap", None), "X", None)
    if memory is None or buffer is None:
        return {}
    room = len(buffer) - len(memory.X)
    name = decision.chosen
    while room > 0:
        n = min(room, 10_000)
        router.quality.observe(X_fill[rng.integers(0, len(X_fill), n)], name, np.ones(n))
        room -= n
    memory = router.quality.memory_
    rows, capacity = len(memory.X), len(memory._snap.X)
    start = time.perf_counter()
    router.feedback(decision, 1.0)
    seconds = time.perf_counter() - start
    return {"rows_before": rows, "buffer_before": capacity, "buffer_after": len(router.quality.memory_._snap.X),
            "ms": 1e3 * seconds}


# ----------------------------------------------------------------- profile
def profile(label: str, router: Router, requests: Requests) -> str:
    """cProfile of `len(requests)` decides (top 15 by tottime); times are totals over all of them."""
    profiler = cProfile.Profile()
    profiler.enable()
    time_decides(router, requests)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    body = text.getvalue()
    print(f"\ncProfile, {label}: {len(requests)} decides (each released), top 15 by tottime\n{body}")
    return body


# ----------------------------------------------------------------- sections
def vs_litellm(litellm: Any, ours: Router, requests: Requests, warm: Requests,
               block: int) -> dict[str, Any]:
    """Section 1: our decide beside LiteLLM's cost-based and simple-shuffle picks, interleaved."""
    candidates = list(ours.candidates)
    loop = asyncio.new_event_loop()
    try:
        cost_based = litellm_router(litellm, candidates, "cost-based-routing")
        shuffle = litellm_router(litellm, candidates, "simple-shuffle")
        picked = check_cost_based(cost_based, candidates, loop, warm)
        litellm_timer(shuffle, loop)(warm)
        configs = {"omniroute decide": lambda r: time_decides(ours, r),
                   "litellm cost-based": litellm_timer(cost_based, loop),
                   "litellm simple-shuffle": litellm_timer(shuffle, loop)}
        durations, rounds = interleave(configs, requests, block)
    finally:
        loop.close()
    return {"rows": compare(durations, rounds, "litellm cost-based"), "candidates": len(candidates),
            "prompts": len(requests), "rounds": len(rounds), "litellm_cost_based_pick": picked}


def scaling(ours: Router, default_dir: Path, refit_dir: Path, train: RoutingDataset, test: RoutingDataset,
            requests: Requests, block: int, profiled: int) -> dict[str, Any]:
    """Section 2: decide with 11 candidates, 200 (189 added by profile) and 200 refitted, interleaved."""
    wide = Router.load(default_dir)
    add_s = add_synthetic(wide, train, np.random.default_rng(SEED))
    wide = budgeted(wide, train, test)
    refit = budgeted(Router.load(refit_dir), train, test)
    durations, rounds = interleave({"11 candidates": lambda r: time_decides(ours, r),
                                    "200 (189 by profile)": lambda r: time_decides(wide, r),
                                    "200 (refitted)": lambda r: time_decides(refit, r)}, requests, block)
    out = {"rows": compare(durations, rounds, "11 candidates"), "prompts": len(requests), "rounds": len(rounds),
           "add_candidate_s": add_s, "added": EXTRA_MODELS, "profile_prompts": PROFILE_PROMPTS,
           "memory_rows": {"11": remembered(ours.quality), "200 (189 by profile)": remembered(wide.quality),
                           "200 (refitted)": remembered(refit.quality)}}
    if profiled:
        out["profile"] = {"11": profile("11 candidates", ours, requests[:4 * profiled]),
                          "200": profile("200 candidates (189 by profile)", wide, requests[:profiled])}
    return out


def feedback_growth(ours: Router, default_dir: Path, train: RoutingDataset, test: RoutingDataset,
                    requests: Requests, levels: Sequence[int], calls: int,
                    n_decide: int) -> dict[str, Any]:
    """Section 3: feedback per call as its rows accumulate, with the default and a raised max_feedback."""
    rng = np.random.default_rng(SEED)
    X_fill = np.asarray(ours.embedder.transform(train.prompts), dtype=np.float64) if ours.embedder is not None \
        else np.empty((len(train), 0))
    decisions = []
    for request in requests[:200]:  # feedback reads only a decision's text and chosen model
        decisions.append(ours.decide(request, SESSION))
        ours.release(decisions[-1])
    out = {}
    for label, max_feedback in (("default max_feedback", None),
                                (f"max_feedback={RAISED_MAX_FEEDBACK:,}", RAISED_MAX_FEEDBACK)):
        router = Router.load(default_dir)
        if max_feedback is not None:
            router.quality.max_feedback = max_feedback
        router = budgeted(router, train, test)
        rows = feedback_levels(router, decisions, levels, calls, requests[:n_decide], X_fill, rng)
        stall = doubling_stall(router, decisions[0], X_fill, rng) if max_feedback is not None else {}
        out[label] = {"max_feedback": getattr(router.quality, "max_feedback", None), "levels": rows,
                      "doubling_call": stall}
    return out


def kernels_loaded() -> dict[str, bool]:
    """Which compiled kernels (shared_core/native.py) the decisions use: OMNIROUTE_KERNELS=0 times the NumPy code."""
    from shared_core import embed
    from shared_core.quality import memory

    return {"_tfidf": embed._tfidf is not None, "_knn": memory._knn is not None}


def report(results: dict[str, Any]) -> None:
    """The three tables and the verdicts against the targets."""
    print(f"compiled kernels in use: {results['kernels']} (OMNIROUTE_KERNELS=0 runs the NumPy code)")
    first = results["vs_litellm"]
    comparison_table(f"Per-request pick, {first['candidates']} candidates, {first['prompts']} RouterBench test "
                     f"prompts as messages, {first['rounds']} interleaved rounds", first["rows"], "litellm cost-based")
    ratio = first["rows"][0]["p50_ratio"]
    print(f"omniroute decide p50 ÷ litellm cost-based p50 = {ratio:.2f} (target ≤ 0.5: "
          f"{'yes' if ratio <= 0.5 else 'NO'}); litellm's cost-based pick: {first['litellm_cost_based_pick']}; "
          f"network attempts: {results['network_attempts']}")
    second = results["scaling"]
    comparison_table(f"Decide by candidates ({second['prompts']} prompts, {second['rounds']} interleaved rounds; "
                     f"189 added by profile in {second['add_candidate_s']:.1f} s; label memory rows "
                     f"{second['memory_rows']})", second["rows"], "11 candidates")
    ratio = second["rows"][1]["p50_ratio"]
    print(f"200 (by profile) ÷ 11 candidates decide p50 = {ratio:.2f} "
          f"(target ≤ 2.5: {'yes' if ratio <= 2.5 else 'NO'})")
    rows = []
    for label, entry in results["feedback"].items():
        at_zero = entry["levels"][0]["p50_ms"]
        for level in entry["levels"]:
            rows.append([label, f"{level['feedback_rows']:,}", level["memory_rows"], level["p50_ms"],
                         level["p99_ms"], level["max_ms"], level["p50_ms"] / at_zero, level["decide_p50_ms"]])
    print_table(f"Router.feedback per call after N feedback rows ({results['feedback_calls']:,} calls per level)",
                ["predictor", "feedback rows", "memory rows", "p50 ms", "p99 ms", "max ms", "p50 ÷ at 0",
                 "decide p50 ms"], rows)
    for label, entry in results["feedback"].items():
        stall = entry["doubling_call"]
        if stall:
            print(f"{label}: the feedback call on a full label buffer ({stall['rows_before']:,} of "
                  f"{stall['buffer_before']:,} rows; after it {stall['buffer_after']:,}) took {stall['ms']:.1f} ms")


# ----------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts, calls and levels (≤ 3 min after the fit)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile of 11- and 200-candidate decides")
    parser.add_argument("--no-cache", action="store_true", help="refit the routers instead of loading cached ones")
    args = parser.parse_args()

    attempts: list[str] = []
    with no_network(attempts):
        litellm = import_litellm()
    dataset_path = DATA / "routerbench_subset.parquet"
    data = load_dataset(dataset_path)
    train, test = data.subset("train"), data.subset("test")
    scratch = tempfile.TemporaryDirectory(prefix="decide_vs_litellm-") if args.no_cache else None
    directory = Path(scratch.name) if scratch else cache_dir(dataset_path)
    if scratch is None:  # the fits of older code go: one cache is kept
        for stale in directory.parent.glob("decide_vs_litellm-*"):
            if stale != directory:
                shutil.rmtree(stale, ignore_errors=True)
    try:
        run(args, litellm, train, test, directory, attempts)
    finally:
        if scratch is not None:
            scratch.cleanup()


def run(args: argparse.Namespace, litellm: Any, train: RoutingDataset, test: RoutingDataset, directory: Path,
        attempts: list[str]) -> None:
    """Fit or load the routers in `directory`, run the three sections, print and write the results."""
    default_dir, refit_dir, meta = routers(train, directory)
    # Each prompt is decided once per config: the token memo must not see it twice.
    n_prompts, block = (344, 43) if args.quick else (len(test), 43)
    requests = [messages_of(p) for p in test.prompts[:n_prompts]]
    warm = [messages_of(p) for p in train.prompts[:50]]
    levels = [0, 10_000, 100_000] if args.quick else [0, 10_000, 100_000, 200_000]
    calls = 300 if args.quick else 1_000
    results: dict[str, Any] = {"quick": args.quick, "litellm": importlib.metadata.version("litellm"), "fit": meta,
                               "feedback_calls": calls, "seconds": {}, "kernels": kernels_loaded()}

    with no_network(attempts):
        ours = budgeted(Router.load(default_dir), train, test)
        start = time.perf_counter()
        print("1/3 decide against LiteLLM ...", flush=True)
        results["vs_litellm"] = vs_litellm(litellm, ours, requests, warm, block)
        results["seconds"]["vs_litellm"] = time.perf_counter() - start
        print("2/3 decide with 200 candidates ...", flush=True)
        start = time.perf_counter()
        results["scaling"] = scaling(ours, default_dir, refit_dir, train, test,
                                     requests[:150] if args.quick else requests, 30 if args.quick else block,
                                     50 if args.profile else 0)
        results["seconds"]["scaling"] = time.perf_counter() - start
        print("3/3 feedback as it accumulates ...", flush=True)
        start = time.perf_counter()
        results["feedback"] = feedback_growth(ours, default_dir, train, test, requests, levels, calls,
                                              30 if args.quick else 50)
        results["seconds"]["feedback"] = time.perf_counter() - start
    if attempts:
        raise NetworkAttempt(f"{len(attempts)} network attempts were blocked: {attempts[:5]}")
    results["network_attempts"] = len(attempts)
    report(results)
    write_json("decide_vs_litellm-quick" if args.quick else "decide_vs_litellm", results)


if __name__ == "__main__":
    main()
