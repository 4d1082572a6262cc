"""What a settle costs the ledger: the four calls it made before, against `commit_books`.

Per store, client CPU (thread time) and wall time per settled reservation on a two-scope chain
whose budgets have a horizon, so λ moves in both scopes:

- "four calls": the books before, the commit, λ per scope, the books after — what
  `Router.commit` and `settle_usage` did before commit 162ba97;
- "commit_books": `LedgerStore.commit_books` with the same pacing update, as they do now.

Each reservation is made before the clock starts; the two forms alternate in blocks, best of
`--repeat` blocks each. Run: python benchmarks/settle_round_trips.py [--calls 1000] [--repeat 5]
[--stores memory,sqlite,redis,postgres]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable

from _common import print_table, write_json

from shared_core import Budget
from shared_core.budget import ScopeState
from shared_core.stores import open_store
from shared_core.stores.base import LedgerStore

CHAIN = ("tenant", "tenant/session")
HOLD, COST = 0.001, 0.000625
URLS = {
    "memory": lambda tmp: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp}/ledger.db",
    "redis": lambda tmp: f"redis://127.0.0.1:6379/0?prefix=omniroute-bench-{uuid.uuid4().hex[:8]}:",
    "postgres": lambda tmp: f"postgresql://127.0.0.1:5432/test?schema=omniroute_bench_{uuid.uuid4().hex[:8]}",
}


def pace(state: ScopeState) -> float:
    """A pacing update that depends on the books, as DualPacer's does."""
    return 1.0 + state.requests * 1e-6


def four_calls(store: LedgerStore, rid: str) -> None:
    before = [s for s in store.states(CHAIN) if s is not None]
    if store.commit(rid, COST, model="m"):
        for state in before:
            store.adjust_lambda(state.scope, pace(state))
    store.states(CHAIN)


def one_call(store: LedgerStore, rid: str) -> None:
    store.commit_books(rid, COST, model="m", scopes=CHAIN, pace=pace)


def block(store: LedgerStore, settle: Callable[[LedgerStore, str], None], calls: int) -> tuple[float, float]:
    """(client CPU µs, wall µs) per settle over `calls` reservations made beforehand."""
    ids = [uuid.uuid4().hex for _ in range(calls)]
    for rid in ids:
        store.reserve(rid, CHAIN, HOLD, ttl_s=600)
    cpu, wall = time.thread_time(), time.perf_counter()
    for rid in ids:
        settle(store, rid)
    return (time.thread_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def drop(kind: str, store: LedgerStore) -> None:
    """Remove what a server-side store wrote for this run."""
    if kind == "redis":
        client = store.client  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{store.prefix}*", count=1000))  # type: ignore[attr-defined]
        if keys:
            client.delete(*keys)
    elif kind == "postgres":
        import psycopg

        with psycopg.connect("postgresql://127.0.0.1:5432/test", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="settles per block (default 1000)")
    parser.add_argument("--repeat", type=int, default=5, help="blocks per form; the best counts (default 5)")
    parser.add_argument("--stores", default="memory,sqlite,redis,postgres")
    args = parser.parse_args()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            store = open_store(URLS[kind](tmp))
            try:
                for scope in CHAIN:
                    store.set_budget(scope, Budget(usd=1e6, horizon=10**9))
                block(store, four_calls, 100), block(store, one_call, 100)  # warm: connections, scripts
                runs: dict[str, list[tuple[float, float]]] = {"four calls": [], "commit_books": []}
                for r in range(args.repeat):
                    forms = [("four calls", four_calls), ("commit_books", one_call)]
                    for name, settle in forms if r % 2 == 0 else forms[::-1]:
                        runs[name].append(block(store, settle, args.calls))
                best = {name: (min(c for c, _ in got), min(w for _, w in got)) for name, got in runs.items()}
                state = store.state(CHAIN[0])
                assert state is not None and state.reserved == 0.0
            finally:
                drop(kind, store)
                store.close()
            results[kind] = {name: {"cpu_us": cpu, "wall_us": wall} for name, (cpu, wall) in best.items()}
            (cpu4, wall4), (cpu1, wall1) = best["four calls"], best["commit_books"]
            rows.append([kind, cpu4, cpu1, cpu1 / cpu4, wall4, wall1, wall1 / wall4])
    print_table(f"A settle's ledger calls: client CPU and wall µs per settle, best of {args.repeat} blocks of "
                f"{args.calls} (two-scope chain, λ moving in both)",
                ["store", "CPU four calls", "CPU commit_books", "CPU ratio", "wall four calls", "wall commit_books",
                 "wall ratio"], rows)
    write_json("settle_round_trips", {"calls": args.calls, "repeat": args.repeat, "stores": results})


if __name__ == "__main__":
    main()
