"""Ledger throughput: reserve+commit pairs per second for each store, in 1 process, 4 threads, 4 processes.

The "as routed" row makes each pair as a routed request does: the chain's books read, the hold,
then `commit_books` (the books around the commit, λ moved by the dual pacer as `Router.commit`
moves it; the budgets are paced over requests, so λ moves on every commit).

Each pair reserves in a two-scope chain (tenant → session) and commits, as one routed request
does. The baseline is the in-memory store in one process. A Router row shows what the store
costs inside a whole request (token counting, prediction, decide and settle).

`--max-finished N` opens every store with that bound on the finished reservations it remembers:
below the number of pairs, each commit also forgets the oldest one, as a ledger at its bound does
(with the default of 100,000 a short run never reaches it). `--baseline-src DIR` measures the same
rows on another source tree too (DIR holds its `shared_core`; make one with `git archive HEAD
shared_core | tar -x -C DIR`), in alternating child runs — baseline, this tree, this tree at
`--max-finished 1000` — and prints each row's speed against the baseline's (target: ≥ 0.95, within
noise); it writes ledger-compare-<stores>.json.

Run: python benchmarks/ledger.py [--pairs 2000] [--redis redis://127.0.0.1:6379/0]
     [--postgres postgresql://postgres@127.0.0.1:5432/test] [--stores memory,postgres]
     [--max-finished N] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import print_table, write_json

from shared_core.budget import MAX_USD, Budget, to_nanos
from shared_core.candidates import Candidate
from shared_core.pacing import DualPacer
from shared_core.router import Router
from shared_core.stores import open_store

CHAIN = ("tenant", "tenant/session")
WARM_UP = ("warm-up",)  # a scope of its own, so warm-up pairs stay out of the measured books
HOLD, COST = 0.001, 0.000625
#: Options every measured store is opened with (--max-finished); set before any worker starts.
OPTIONS: dict[str, Any] = {}


def _open(url_or_store):
    return open_store(url_or_store, **OPTIONS) if isinstance(url_or_store, str) else url_or_store


HORIZON = 10**9  # requests each measured budget is paced over: λ = θ / (MAX_USD / HORIZON)


def _paces(chain: tuple[str, ...]) -> tuple[Any, Any]:
    """λ moved as `Router.commit` moves it, given as the router gives it: a PaceUpdate (Redis makes it
    inside its commit script), or, in a tree from before PaceUpdate, the pacer's update as a function.
    Two of them, for calls costing nothing and twice the even share: alternated, they move θ on
    every commit, up and down, as spend near its target does (one fixed cost would pin θ at a bound)."""
    pacer, share = DualPacer(), MAX_USD / HORIZON
    try:
        from shared_core.pacing import PaceUpdate
    except ImportError:
        charged = set(chain)
        return tuple(lambda state, c=cost: pacer.update(state, c) if state.scope in charged else None
                     for cost in (0.0, 2 * share))  # type: ignore[return-value]
    return PaceUpdate(pacer, 0.0, frozenset(chain)), PaceUpdate(pacer, 2 * share, frozenset(chain))


def _pairs(url_or_store, n: int, chain: tuple[str, ...] = CHAIN, routed: bool = False) -> None:
    store = _open(url_or_store)
    paces = _paces(chain)
    for i in range(n):
        rid = uuid.uuid4().hex
        if routed:  # the ledger calls of a routed request: its books read, the hold, the commit with λ
            store.states(chain)
        store.reserve(rid, chain, HOLD, ttl_s=600)
        if routed:
            store.commit_books(rid, COST, "m", scopes=chain, pace=paces[i % 2])
        else:
            store.commit(rid, COST, "m")


def _worker(url: str, n: int, barrier, out) -> None:
    store = _open(url)
    _pairs(store, 100, WARM_UP)
    barrier.wait()
    t0 = time.perf_counter()
    _pairs(store, n)
    out.put((t0, time.perf_counter()))
    store.close()


def _in_processes(url: str, n: int, workers: int) -> float:
    """Seconds from the first worker's start to the last one's end; each does n pairs."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, n, barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(e for _, e in spans) - min(s for s, _ in spans)


def _in_threads(store, n: int, workers: int) -> float:
    threads = [threading.Thread(target=_pairs, args=(store, n)) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _router_requests(url: str, n: int) -> float:
    """Seconds for n decide+settle requests through a Router on this store."""
    cands = [Candidate(name="large", input_price=2.5, output_price=10.0, prior_quality=0.9),
             Candidate(name="small", input_price=0.15, output_price=0.6, prior_quality=0.6)]
    router = Router(cands, store=_open(url))
    for scope in CHAIN:
        router.set_budget(scope, Budget(usd=MAX_USD))
    prompts = [f"Request {i}: summarise the quarterly report in three bullet points." for i in range(n)]
    router.settle(router.decide(prompts[0], CHAIN[-1]), output_tokens=50)  # warm the tokenizer
    t0 = time.perf_counter()
    for p in prompts:
        router.settle(router.decide(p, CHAIN[-1]), output_tokens=50)
    seconds = time.perf_counter() - t0
    router.store.close()
    _clean(url)
    return seconds


#: A mode whose pairs are made as a routed request makes them (Router.decide, then Router.commit).
ROUTED = "1 process, as routed: read + reserve + commit_books"
STORES = ("memory", "sqlite", "redis", "postgres", "postgres-async")
#: The server's own setting: each commit waits for its WAL flush (an fsync); "async" lets it go first.
ASYNC_COMMIT = "-c synchronous_commit=off"


def _fresh(kind: str, tmp: Path, servers: dict[str, str]) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp / (uuid.uuid4().hex + '.db')}"
    if kind == "redis":
        return f"{servers['redis']}?prefix=omniroute-bench:{uuid.uuid4().hex}:"
    return f"{servers['postgres']}?schema=omniroute_bench_{uuid.uuid4().hex}"


def _server_settings(kind: str) -> None:
    """Connections opened from now on (in this process and its children) use `kind`'s server settings."""
    if kind == "postgres-async":
        os.environ["PGOPTIONS"] = ASYNC_COMMIT
    else:
        os.environ.pop("PGOPTIONS", None)


def _set_up(url: str):
    store = _open(url)
    for scope in CHAIN + WARM_UP:
        store.set_budget(scope, Budget(usd=MAX_USD, horizon=HORIZON))
    _pairs(store, 100, WARM_UP)
    return store


def _clean(url: str) -> None:
    if url.startswith("redis"):
        store = open_store(url)
        keys = list(store.client.scan_iter(match=store.prefix + "*", count=1000))
        if keys:
            store.client.delete(*keys)
        store.close()
    elif url.startswith("postgresql"):
        import psycopg

        base, _, schema = url.partition("?schema=")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _server_problem(url: str) -> str | None:
    try:
        store = open_store(url)
        store.scopes()
        store.close()
    except Exception as e:  # any failure means: no usable server here, say why in the table
        return f"{type(e).__name__}: {e}"
    _clean(url)
    return None


def _ledger_run(
    kind: str, mode: str, tmp: Path, servers: dict[str, str], n: int, workers: int
) -> tuple[float, int, bool, float | None]:
    """Seconds for one run of `mode` on a fresh store, the pairs done, whether the books balance, and
    this process's CPU seconds per pair (None for worker processes): on a busy machine CPU time
    varies far less than wall time, and it is what a store's own code costs the client."""
    url = _fresh(kind, tmp, servers)
    store = _set_up(url)
    cpu0 = time.process_time()
    if mode.startswith("1 process"):
        t0 = time.perf_counter()
        _pairs(store, n, routed=mode == ROUTED)
        seconds, total = time.perf_counter() - t0, n
    elif mode.endswith("threads"):
        seconds, total = _in_threads(store, n, workers), n * workers
    else:
        seconds, total = _in_processes(url, n, workers), n * workers
    cpu = None if mode.endswith("processes") else (time.process_time() - cpu0) / total
    balanced = (to_nanos(store.state(CHAIN[0]).committed) == total * to_nanos(COST)
                and store.open_reservations() == 0)
    store.close()
    _clean(url)
    return seconds, total, balanced, cpu


def _ping_seconds(kind: str, url: str, n: int) -> float:
    """Seconds for n round trips that do nothing: Redis PING, PostgreSQL `SELECT 1`."""
    if kind == "redis":
        store = open_store(url)
        t0 = time.perf_counter()
        for _ in range(n):
            store.client.ping()
        seconds = time.perf_counter() - t0
        store.close()
        return seconds
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for _ in range(n):
            conn.execute("SELECT 1")
        return time.perf_counter() - t0


def _row(store: str, mode: str, n: int, seconds: float, balanced: bool | None, cpu: float | None = None) -> dict:
    return {"store": store, "mode": mode, "n": n, "seconds": seconds, "per_s": n / seconds,
            "us_each": seconds / n * 1e6, "cpu_us_each": None if cpu is None else cpu * 1e6,
            "books_balance": balanced}


def _compare(args: argparse.Namespace, argv: list[str]) -> None:
    """Run this script on the baseline tree and on this one, alternating, and print the ratios."""
    base_src = Path(args.baseline_src).resolve()
    if not (base_src / "shared_core" / "__init__.py").is_file():
        raise SystemExit(f"--baseline-src {base_src} holds no shared_core package")
    passed, skip = [], False
    for a in argv:  # everything but --baseline-src and --repeat goes to each child run
        if skip:
            skip = False
        elif a in ("--baseline-src", "--repeat"):
            skip = True
        elif not a.startswith(("--baseline-src=", "--repeat=")):
            passed.append(a)
    configs = {"baseline": (str(base_src), []), "this tree": (None, []),
               "this tree, max_finished=1000": (None, ["--max-finished", "1000"])}
    runs: dict[str, list[list[dict]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for name, (src, extra) in configs.items():
                env = dict(os.environ)
                if src is not None:
                    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
                out = Path(tmp) / f"{r}-{len(runs[name])}-{name.split()[0]}.json"
                subprocess.run([sys.executable, __file__, *passed, *extra, "--repeat", "1", "--out", str(out)],
                               env=env, check=True, stdout=subprocess.DEVNULL)
                runs[name].append(json.loads(out.read_text())["results"])
                print(f"run {r + 1}/{args.repeat}: {name} done", flush=True)
    best = {name: {} for name in configs}
    for name, results in runs.items():
        for result in results:
            for row in result:
                key = (row["store"], row["mode"])
                if key not in best[name] or row["per_s"] > best[name][key]["per_s"]:
                    best[name][key] = row
    cpu: dict[str, dict] = {name: {} for name in configs}  # the least CPU per pair of any run
    for name, results in runs.items():
        for result in results:
            for row in result:
                key, used = (row["store"], row["mode"]), row.get("cpu_us_each")
                if used is not None and used < cpu[name].get(key, float("inf")):
                    cpu[name][key] = used
    names = list(configs)
    rows, compared = [], []
    for key, base in best["baseline"].items():
        line = {"store": key[0], "mode": key[1], "n": base["n"],
                **{f"per_s[{n}]": best[n][key]["per_s"] if key in best[n] else None for n in names},
                **{f"cpu_us_each[{n}]": cpu[n].get(key) for n in names}}
        for n in names[1:]:
            line[f"vs baseline[{n}]"] = None if key not in best[n] else best[n][key]["per_s"] / base["per_s"]
            line[f"cpu vs baseline[{n}]"] = (None if key not in cpu[n] or key not in cpu["baseline"]
                                             else cpu[n][key] / cpu["baseline"][key])
        compared.append(line)
        rows.append([key[0], key[1], base["n"], *(line[f"per_s[{n}]"] or "-" for n in names),
                     *(line[f"vs baseline[{n}]"] or "-" for n in names[1:]),
                     *(line[f"cpu_us_each[{n}]"] or "-" for n in names),
                     *(line[f"cpu vs baseline[{n}]"] or "-" for n in names[1:])])
    short = {"baseline": "base", "this tree": "new", "this tree, max_finished=1000": "new@1000"}
    print_table(f"ledger throughput against {base_src} (best of {args.repeat} alternating runs each; speed: "
                "pairs/s, higher is better; CPU: client µs per pair, lower is better)",
                ["store", "mode", "n", *(f"per s {short[n]}" for n in names),
                 *(f"speed {short[n]}/base" for n in names[1:]), *(f"CPU µs {short[n]}" for n in names),
                 *(f"CPU {short[n]}/base" for n in names[1:])], rows)
    write_json("-".join(["ledger-compare", *args.stores.split(",")]),
               {"baseline_src": str(base_src), "pairs_per_worker": args.pairs, "router_requests": args.requests,
                "repeat": args.repeat, "configs": names, "results": compared})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="reserve+commit pairs per worker (default 2000)")
    parser.add_argument("--requests", type=int, default=500,
                        help="Router requests per store (default 500; 0 leaves the Router rows out)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest counts (default 3)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis server to measure")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL database to measure (in a schema made and dropped per run)")
    parser.add_argument("--stores", default=",".join(STORES),
                        help=f"the stores to measure, memory first (default {','.join(STORES)}; postgres-async is "
                             f"PostgreSQL with {ASYNC_COMMIT!r}); a subset writes ledger-<stores>.json")
    parser.add_argument("--max-finished", type=int, default=None,
                        help="open every store with this max_finished (default: the store's own)")
    parser.add_argument("--baseline-src", default=None,
                        help="a directory holding another tree's shared_core, measured in alternating runs")
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)  # a child run's results file
    args = parser.parse_args()
    n, workers = args.pairs, 4
    chosen = args.stores.split(",")
    if chosen[0] != "memory" or not set(chosen) <= set(STORES):
        parser.error(f"--stores must start with memory and name only {', '.join(STORES)}")
    if args.baseline_src is not None:
        _compare(args, sys.argv[1:])
        return
    if args.max_finished is not None:
        OPTIONS["max_finished"] = args.max_finished
    servers = {"redis": args.redis, "postgres": args.postgres}
    skipped = {}
    for kind in chosen:
        server = servers.get(kind.partition("-")[0])
        problem = server and _server_problem(_fresh(kind, Path(), servers))
        if problem:
            skipped[kind] = problem
            print(f"skipping {kind}: {problem}")
    kinds = [k for k in chosen if k not in skipped]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            _server_settings(kind)
            # Memory in 4 processes would be 4 unshared ledgers: nothing to measure.
            modes = ["1 process", ROUTED, f"{workers} threads"] + ([] if kind == "memory" else [f"{workers} processes"])
            for mode in modes:
                runs = [_ledger_run(kind, mode, Path(tmp), servers, n, workers) for _ in range(args.repeat)]
                seconds, total, *_ = min(runs)
                cpu = min((r[3] for r in runs if r[3] is not None), default=None)
                results.append(_row(kind, mode, total, seconds, all(r[2] for r in runs), cpu))
            if kind in ("redis", "postgres"):
                seconds = min(_ping_seconds(kind, servers[kind], n) for _ in range(args.repeat))
                floor = "PING" if kind == "redis" else "SELECT 1"
                results.append(_row(kind, f"{floor} round trip (floor: a pair is 2 calls)", n, seconds, None))
        for kind in kinds if args.requests else ():
            _server_settings(kind)
            seconds = min(_router_requests(_fresh(kind, Path(tmp), servers), args.requests)
                          for _ in range(args.repeat))
            results.append(_row(kind, "Router decide+settle, 1 process", args.requests, seconds, None))
        _server_settings("memory")

    if args.out is not None:
        Path(args.out).write_text(json.dumps({"results": results}))
        return
    base = {"pairs": results[0]["per_s"],
            "router": next((r["per_s"] for r in results if r["mode"].startswith("Router")), None)}
    rows = []
    for r in results:
        kind = None if "round trip" in r["mode"] else "router" if r["mode"].startswith("Router") else "pairs"
        r["vs_memory"] = None if kind is None else r["per_s"] / base[kind]
        rows.append([r["store"], r["mode"], r["n"], r["per_s"], r["us_each"],
                     "-" if r["cpu_us_each"] is None else r["cpu_us_each"],
                     "-" if r["vs_memory"] is None else r["vs_memory"],
                     {True: "yes", False: "NO", None: "-"}[r["books_balance"]]])
    print_table(f"ledger throughput: reserve+commit pairs on a 2-scope chain ({n} per worker, best of {args.repeat})",
                ["store", "mode", "pairs or requests", "per s", "µs each", "client CPU µs each",
                 "vs memory (1 process)", "books balance"], rows)
    name = "ledger" if chosen == list(STORES) else "-".join(["ledger", *chosen])
    write_json(name, {"pairs_per_worker": n, "workers": workers, "router_requests": args.requests,
                      "repeat": args.repeat, "skipped": skipped, "results": results})


if __name__ == "__main__":
    main()
