"""Ledger throughput: reserve+commit pairs per second for each store, in 1 process, 4 threads, 4 processes.

Each pair reserves in a two-scope chain (tenant → session) and commits, as one routed request
does. The baseline is the in-memory store in one process. A Router row shows what the store
costs inside a whole request (token counting, prediction, decide and settle).

Run: python benchmarks/ledger.py [--pairs 2000] [--redis redis://127.0.0.1:6379/0]
     [--postgres postgresql://postgres@127.0.0.1:5432/test] [--stores memory,postgres]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _common import print_table, write_json

from shared_core.budget import MAX_USD, Budget, to_nanos
from shared_core.candidates import Candidate
from shared_core.router import Router
from shared_core.stores import open_store

CHAIN = ("tenant", "tenant/session")
WARM_UP = ("warm-up",)  # a scope of its own, so warm-up pairs stay out of the measured books
HOLD, COST = 0.001, 0.000625


def _pairs(url_or_store, n: int, chain: tuple[str, ...] = CHAIN) -> None:
    store = open_store(url_or_store)
    for _ in range(n):
        rid = uuid.uuid4().hex
        store.reserve(rid, chain, HOLD, ttl_s=600)
        store.commit(rid, COST, "m")


def _worker(url: str, n: int, barrier, out) -> None:
    store = open_store(url)
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
    router = Router(cands, store=url)
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
    store = open_store(url)
    for scope in CHAIN + WARM_UP:
        store.set_budget(scope, Budget(usd=MAX_USD))
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
) -> tuple[float, int, bool]:
    """Seconds for one run of `mode` on a fresh store, the pairs done, and whether the books balance."""
    url = _fresh(kind, tmp, servers)
    store = _set_up(url)
    if mode == "1 process":
        t0 = time.perf_counter()
        _pairs(store, n)
        seconds, total = time.perf_counter() - t0, n
    elif mode.endswith("threads"):
        seconds, total = _in_threads(store, n, workers), n * workers
    else:
        seconds, total = _in_processes(url, n, workers), n * workers
    balanced = (to_nanos(store.state(CHAIN[0]).committed) == total * to_nanos(COST)
                and store.open_reservations() == 0)
    store.close()
    _clean(url)
    return seconds, total, balanced


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


def _row(store: str, mode: str, n: int, seconds: float, balanced: bool | None) -> dict:
    return {"store": store, "mode": mode, "n": n, "seconds": seconds, "per_s": n / seconds,
            "us_each": seconds / n * 1e6, "books_balance": balanced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="reserve+commit pairs per worker (default 2000)")
    parser.add_argument("--requests", type=int, default=500, help="Router requests per store (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest counts (default 3)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis server to measure")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL database to measure (in a schema made and dropped per run)")
    parser.add_argument("--stores", default=",".join(STORES),
                        help=f"the stores to measure, memory first (default {','.join(STORES)}; postgres-async is "
                             f"PostgreSQL with {ASYNC_COMMIT!r}); a subset writes ledger-<stores>.json")
    args = parser.parse_args()
    n, workers = args.pairs, 4
    chosen = args.stores.split(",")
    if chosen[0] != "memory" or not set(chosen) <= set(STORES):
        parser.error(f"--stores must start with memory and name only {', '.join(STORES)}")
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
            modes = ["1 process", f"{workers} threads"] + ([] if kind == "memory" else [f"{workers} processes"])
            for mode in modes:
                runs = [_ledger_run(kind, mode, Path(tmp), servers, n, workers) for _ in range(args.repeat)]
                seconds, total, _ = min(runs)
                results.append(_row(kind, mode, total, seconds, all(balanced for *_, balanced in runs)))
            if kind in ("redis", "postgres"):
                seconds = min(_ping_seconds(kind, servers[kind], n) for _ in range(args.repeat))
                floor = "PING" if kind == "redis" else "SELECT 1"
                results.append(_row(kind, f"{floor} round trip (floor: a pair is 2 calls)", n, seconds, None))
        for kind in kinds:
            _server_settings(kind)
            seconds = min(_router_requests(_fresh(kind, Path(tmp), servers), args.requests)
                          for _ in range(args.repeat))
            results.append(_row(kind, "Router decide+settle, 1 process", args.requests, seconds, None))
        _server_settings("memory")

    base = {"pairs": results[0]["per_s"],
            "router": next(r for r in results if r["mode"].startswith("Router"))["per_s"]}
    rows = []
    for r in results:
        kind = None if "round trip" in r["mode"] else "router" if r["mode"].startswith("Router") else "pairs"
        r["vs_memory"] = None if kind is None else r["per_s"] / base[kind]
        rows.append([r["store"], r["mode"], r["n"], r["per_s"], r["us_each"],
                     "-" if r["vs_memory"] is None else r["vs_memory"],
                     {True: "yes", False: "NO", None: "-"}[r["books_balance"]]])
    print_table(f"ledger throughput: reserve+commit pairs on a 2-scope chain ({n} per worker, best of {args.repeat})",
                ["store", "mode", "pairs or requests", "per s", "µs each", "vs memory (1 process)", "books balance"],
                rows)
    name = "ledger" if chosen == list(STORES) else "-".join(["ledger", *chosen])
    write_json(name, {"pairs_per_worker": n, "workers": workers, "router_requests": args.requests,
                      "repeat": args.repeat, "skipped": skipped, "results": results})


if __name__ == "__main__":
    main()
