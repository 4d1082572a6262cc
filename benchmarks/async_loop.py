"""Does routing hold the event loop? 200 concurrent ChatOmniRoute.ainvoke against the same calls made directly.

Each candidate is a LangChain chat model whose `_agenerate` awaits 0.2 s and reports usage, so
a round of 200 concurrent calls takes ~0.2 s plus whatever holds the loop. The router is the
default fitted one (`fit_router` on RouterBench's train split, 11 candidates, the "auto"
predictor; fitted once, saved, and loaded over each ledger), routing RouterBench test prompts
in a budgeted session, so every call reserves, commits and moves λ in the ledger: memory,
SQLite (a file in a temporary folder) and Redis (127.0.0.1:6379, keys under a fresh prefix).

Per store and round, interleaved and in alternating order: the 200 calls made directly on one
candidate; routed, with routing off the loop (the shipped async path); and routed "on the loop"
— the same code with routing's worker pool replaced by running each call inline, which is what
the async path did before. A ticker coroutine sleeping 1 ms records the loop's worst lateness
(its longest stall) in each round. Reported: median over rounds of the wall time routed ÷ direct
(target ≤ 1.5) and of the longest stall (target ≤ 50 ms); the stall also without the garbage
collector's pauses (which stop every thread, whichever triggers them) and the longest such pause;
and per stage the CPU seconds the routing calls spent per round (thread CPU time inside
Router.decide, Router.commit and Router.release, summed over the 200 calls), to show how much of
the wall is decision CPU.

Run: python benchmarks/async_loop.py [--rounds 5] [--router DIR] [--stores memory,sqlite,redis]
(--router: a folder to keep the fitted router in between runs; fitting it takes ~35 s.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from _common import DATA, print_table, write_json
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from omniroute_lc import ChatOmniRoute
from shared_core import Budget, offload
from shared_core.data import load_dataset
from shared_core.fitting import DEFAULT_PREDICTOR, fit_router
from shared_core.persist import MANIFEST
from shared_core.router import Router

CALLS, LATENCY_S, TICK_S = 200, 0.2, 0.001
TARGET_RATIO, TARGET_STALL_MS = 1.5, 50.0
SESSION = "bench/async"
REDIS = "redis://127.0.0.1:6379/0"


class SleepyChat(BaseChatModel):
    """A provider stand-in: answers after `latency_s` (awaited, in async) and reports its usage."""

    model_name: str
    latency_s: float = LATENCY_S

    @property
    def _llm_type(self) -> str:
        return "sleepy-fake"

    def _answer(self, messages: list[BaseMessage]) -> ChatResult:
        prompt = sum(len(m.text.split()) for m in messages)
        usage = {"input_tokens": prompt, "output_tokens": 5, "total_tokens": prompt + 5}
        message = AIMessage(content="the answer is B", usage_metadata=usage,
                            response_metadata={"model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        time.sleep(self.latency_s)
        return self._answer(messages)

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        await asyncio.sleep(self.latency_s)
        return self._answer(messages)


class StageClock:
    """Thread CPU seconds spent inside the router's decide / commit / release, summed over calls.

    The async path decides in steps (shared_core.offload): checking each request, predicting for
    a batch of them, finishing each; "decide" sums all three."""

    STAGES = ("decide", "commit", "release")
    STEPS = {"decide": ((0, "decide"), (0, "_ask"), (0, "_decide_predicted"), (1, "features"), (1, "predict")),
             "commit": ((0, "commit"),), "release": ((0, "release"),)}

    def __init__(self, router: Router) -> None:
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        for stage, steps in self.STEPS.items():
            for owner, name in steps:
                target = (router, router.pool)[owner]
                setattr(target, name, self._timed(stage, getattr(target, name)))

    def _timed(self, stage: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with self._lock:
                    self.seconds[stage] += spent
        return run

    def take(self) -> dict[str, float]:
        """The seconds counted since the last take."""
        with self._lock:
            taken, self.seconds = self.seconds, dict.fromkeys(self.STAGES, 0.0)
        return taken


@contextlib.contextmanager
def routing_inline() -> Iterator[None]:
    """Routing's workers replaced by running each call at once on the caller's thread (the event
    loop): the async path as it was before routing moved off the loop."""
    dispatch = offload._dispatch

    def inline(job: Any) -> None:
        offload._run([job])
        offload._settle_futures([job])

    offload._dispatch = inline
    try:
        yield
    finally:
        offload._dispatch = dispatch


class GCPauses:
    """The garbage collector's pauses (start, end) while installed: they stop every thread, the
    event loop's included, whoever triggers them, so a stall is also reported without them."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter(), info["generation"]))

    def overlap(self, start: float, end: float) -> float:
        """Seconds of GC pause within [start, end]."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b, _ in self.pauses)


async def one_round(make_call: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    """Wall seconds of CALLS concurrent calls; the loop's longest stall while they ran (the 1 ms
    ticker's worst lateness), with and without the garbage collector's pauses; the longest of those."""
    stop, ticks = asyncio.Event(), []

    async def tick() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(TICK_S)
            ticks.append((start, time.perf_counter()))

    # Each round starts from a collected heap, so that a full collection — its pause set by all the
    # process holds (LangChain's, pydantic's, the router's objects), not by the round's own work —
    # does not fall into whichever mode happens to run when the counters trip (the pauses that still
    # fall in a round are reported).
    gc.collect()
    collector = GCPauses()
    gc.callbacks.append(collector)
    try:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)  # the ticker is running before the calls start
        start, loop_cpu = time.perf_counter(), time.thread_time()
        results = await asyncio.gather(*(make_call(i) for i in range(CALLS)))
        wall, loop_cpu = time.perf_counter() - start, time.thread_time() - loop_cpu
        stop.set()
        await ticker
    finally:
        gc.callbacks.remove(collector)
    assert len(results) == CALLS
    late = [(b - a - TICK_S, b - a - TICK_S - collector.overlap(a, b)) for a, b in ticks]
    return {"wall": wall, "stall": max(x for x, _ in late), "stall_without_gc": max(y for _, y in late),
            "longest_gc": max((b - a for a, b, _ in collector.pauses), default=0.0), "loop_cpu": loop_cpu}


def fitted_router(folder: Path) -> None:
    """Fit the default router on RouterBench's train split into `folder` (unless it holds one)."""
    if (folder / MANIFEST).exists():
        return
    train = load_dataset(DATA / "routerbench_subset.parquet").subset("train")
    start = time.perf_counter()
    router = fit_router(train, DEFAULT_PREDICTOR, candidates=train.candidates(max_output_tokens=1024))
    router.save(folder)
    print(f"fitted the {DEFAULT_PREDICTOR!r} router in {time.perf_counter() - start:.1f} s")


def store_url(kind: str, tmp: Path, prefix: str) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'ledger.db'}"
    if kind == "redis":
        return f"{REDIS}?prefix={prefix}"
    raise ValueError(f"unknown store {kind!r}")


def drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


async def run(args: argparse.Namespace, folder: Path, tmp: Path) -> dict[str, Any]:
    test = load_dataset(DATA / "routerbench_subset.parquet").subset("test")
    prompts = list(dict.fromkeys(test.prompts))[:CALLS]
    prefix = f"omniroute-bench-{uuid.uuid4().hex[:8]}:"
    setups: dict[str, tuple[ChatOmniRoute, StageClock, SleepyChat]] = {}
    for kind in args.stores:
        names = [c.name for c in Router.load(folder).candidates]
        models = {name: SleepyChat(model_name=name) for name in names}
        router = Router.load(folder, models=models, store=store_url(kind, tmp, prefix))
        router.set_budget(SESSION, Budget(usd=1e6, horizon=100 * CALLS * args.rounds))
        chat = ChatOmniRoute(router=router, max_tokens=256)
        for prompt in prompts[:20]:  # warm up: token encodings, BLAS, the ledger's connections
            await chat.ainvoke(prompt, session=SESSION)
        setups[kind] = (chat, StageClock(router), models[names[0]])

    modes = ("direct", "off the loop", "on the loop (before)")
    samples: dict[str, dict[str, list[dict[str, float]]]] = {k: {m: [] for m in modes} for k in args.stores}
    stages: dict[str, list[dict[str, float]]] = {k: [] for k in args.stores}
    for r in range(args.rounds):
        for kind in args.stores:
            chat, clock, direct = setups[kind]
            order = modes if r % 2 == 0 else modes[::-1]  # neither path always runs first
            for mode in order:
                clock.take()
                if mode == "direct":
                    outcome = await one_round(lambda i: direct.ainvoke(prompts[i]))
                elif mode == "off the loop":
                    outcome = await one_round(lambda i: chat.ainvoke(prompts[i], session=SESSION))
                    stages[kind].append(clock.take())
                else:
                    with routing_inline():
                        outcome = await one_round(lambda i: chat.ainvoke(prompts[i], session=SESSION))
                samples[kind][mode].append(outcome)
            state = chat.router.budget_state(SESSION)
            assert state.reserved == 0, f"{kind}: money left reserved after round {r}"

    def median_ms(runs: list[dict[str, float]], key: str) -> float:
        return 1e3 * statistics.median(r[key] for r in runs)

    rows, results = [], {}
    for kind in args.stores:
        direct = [r["wall"] for r in samples[kind]["direct"]]
        entry: dict[str, Any] = {"direct_wall_s": statistics.median(direct)}
        for mode in modes:
            runs = samples[kind][mode]
            ratios = [r["wall"] / d for r, d in zip(runs, direct, strict=True)]
            entry[mode] = {"wall_s": statistics.median(r["wall"] for r in runs), "ratio": statistics.median(ratios),
                           "stall_ms": median_ms(runs, "stall"), "worst_stall_ms": 1e3 * max(r["stall"] for r in runs),
                           "stall_without_gc_ms": median_ms(runs, "stall_without_gc"),
                           "longest_gc_ms": median_ms(runs, "longest_gc"),
                           "loop_cpu_s": statistics.median(r["loop_cpu"] for r in runs), "rounds": runs}
            ok = entry[mode]["ratio"] <= TARGET_RATIO and entry[mode]["stall_ms"] <= TARGET_STALL_MS
            rows.append([kind, mode, entry[mode]["wall_s"], entry[mode]["ratio"], entry[mode]["stall_ms"],
                         entry[mode]["worst_stall_ms"], entry[mode]["stall_without_gc_ms"],
                         entry[mode]["longest_gc_ms"], "–" if mode == "direct" else "yes" if ok else "NO"])
        cpu = {s: statistics.median(t[s] for t in stages[kind]) for s in StageClock.STAGES}
        entry["stage_cpu_s_per_round"] = cpu
        results[kind] = entry
    print_table(f"{CALLS} concurrent ainvoke, candidates awaiting {LATENCY_S} s; median of {args.rounds} rounds "
                f"(routing threads: {offload.ROUTING_THREADS})",
                ["store", "calls", "wall s", "÷ direct", "stall ms", "stall ms (worst round)",
                 "stall ms without GC", "longest GC pause ms", f"≤ {TARGET_RATIO}× and ≤ {TARGET_STALL_MS:g} ms"], rows)
    stage_rows = []
    for kind in args.stores:
        entry = results[kind]
        cpu = entry["stage_cpu_s_per_round"]
        routed, direct = entry["off the loop"], entry["direct"]
        stage_rows.append([kind, cpu["decide"], cpu["commit"], cpu["release"], sum(cpu.values()),
                           routed["loop_cpu_s"], direct["loop_cpu_s"], routed["wall_s"] - direct["wall_s"]])
    print_table(f"Where the routed round's extra wall time goes: CPU seconds per round of {CALLS} calls, routing "
                "off the loop (median of rounds): the routing threads' inside decide / commit / release, and the "
                "event loop thread's, routed and direct (the GIL runs them one at a time)",
                ["store", "decide CPU s", "commit CPU s", "release CPU s", "routing CPU s", "loop CPU s (routed)",
                 "loop CPU s (direct)", "extra wall s"], stage_rows)
    if "redis" in args.stores:
        drop_redis_keys(prefix)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--router", type=Path, help="folder to keep the fitted router in (fitted if empty)")
    parser.add_argument("--stores", type=lambda s: s.split(","), default=["memory", "sqlite", "redis"])
    parser.add_argument("--threads", type=int, default=offload.ROUTING_THREADS,
                        help="routing worker threads (shared_core.offload.ROUTING_THREADS)")
    args = parser.parse_args()
    offload.ROUTING_THREADS = args.threads  # read when the pool is first made
    with tempfile.TemporaryDirectory(prefix="omniroute-async-loop-") as tmp:
        folder = args.router or Path(tmp) / "router"
        fitted_router(folder)
        gc.collect()  # the fit's garbage is not the routed calls'
        results = asyncio.run(run(args, folder, Path(tmp)))
    write_json("async_loop", {"calls": CALLS, "latency_s": LATENCY_S, "rounds": args.rounds,
                              "routing_threads": args.threads, "predictor": DEFAULT_PREDICTOR,
                              "target_ratio": TARGET_RATIO, "target_stall_ms": TARGET_STALL_MS,
                              "results": results})


if __name__ == "__main__":
    main()
