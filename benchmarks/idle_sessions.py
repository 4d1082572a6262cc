"""Idle sessions: ledger size, memory and decide latency after 200,000 distinct sessions.

A router with a default session budget serves one request (decide + settle) for each of N
distinct sessions in tenant "acme", one session per simulated second (a fake clock, given to
the store), with finished reservations kept an hour (`retention_s=3600`). Two settings run in
the same process, on each store: sessions forgotten after an hour idle
(`session_idle_ttl_s=3600`, the mechanism the default of a week uses) and never forgotten
(`session_idle_ttl_s=None`, as before issue 13). At each checkpoint the script reports the
scopes the ledger holds, its size (process RSS for memory://, the file for SQLite, Redis's
`used_memory`) and the latency of the last 2,000 requests.

The candidates are priced priors (no embedder), so the time measured is the ledger's and the
router's own, not a predictor's.

Run: python benchmarks/idle_sessions.py [--sessions 200000] [--stores memory,sqlite,redis]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
import time
import uuid
from pathlib import Path

from _common import percentiles_ms, print_table, write_json

from shared_core import Budget, Candidate, Router
from shared_core.stores import open_store

WINDOW = 2_000
REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    """Simulated time: one second per session."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rss_mib() -> float:
    """Resident memory after returning freed heap pages to the system (glibc keeps them otherwise,
    so RSS would show the allocator's history rather than what is live)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def candidates() -> list[Candidate]:
    return [
        Candidate(name="small", input_price=0.15, output_price=0.6, prior_quality=0.6, max_output_tokens=256),
        Candidate(name="large", input_price=2.5, output_price=10.0, prior_quality=0.8, max_output_tokens=256),
    ]


def size_mib(kind: str, store, path: Path | None) -> float:
    if kind == "memory":
        return rss_mib()
    if kind == "sqlite":
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    return store.client.info("memory")["used_memory"] / 2**20


def run(kind: str, idle: float | None, checkpoints: list[int]) -> list[dict]:
    clock = Clock()
    path = None
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        path = Path(tempfile.mkdtemp()) / "ledger.db"
        url = f"sqlite:///{path}"
    else:
        url = f"{REDIS_URL}?prefix=bench-idle:{uuid.uuid4().hex}:"
    store = open_store(url, clock=clock, retention_s=3600.0)
    router = Router(candidates(), store=store, default_budget=Budget(usd=1.0), session_idle_ttl_s=idle)
    router.set_budget("acme", Budget(usd=1e6))
    rows, durations = [], []
    gc.collect()
    try:
        for i in range(1, checkpoints[-1] + 1):
            clock.now += 1.0
            start = time.perf_counter()
            decision = router.decide("Summarise the ledger rules.", f"acme/s{i}", max_tokens=64)
            router.settle(decision, output_tokens=32)
            durations.append(time.perf_counter() - start)
            if i in checkpoints:
                gc.collect()
                rows.append({"sessions": i, "scopes": len(store.scopes()), "size_mib": size_mib(kind, store, path),
                             **percentiles_ms(durations[-WINDOW:])})
                print(f"  {kind} idle={idle}: {i:,} sessions, {rows[-1]['scopes']:,} scopes, "
                      f"{rows[-1]['size_mib']:.1f} MiB, p50 {rows[-1]['p50_ms']:.3f} ms", flush=True)
    finally:
        if kind == "redis":
            keys = list(store.client.scan_iter(match=store.prefix + "*", count=10_000))
            for j in range(0, len(keys), 10_000):
                store.client.delete(*keys[j:j + 10_000])
        store.close()
        if path is not None:
            for p in path.parent.glob(path.name + "*"):
                os.unlink(p)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--stores", default="memory,sqlite,redis")
    args = parser.parse_args()
    checkpoints = sorted({min(WINDOW * 5, args.sessions), args.sessions // 4, args.sessions // 2, args.sessions})
    results: dict[str, list[dict]] = {}
    for kind in args.stores.split(","):
        # The setting that grows runs second, so the process's own growth never flatters it.
        for label, idle in (("forgotten after 1 h idle", 3600.0), ("never forgotten (before)", None)):
            results[f"{kind}: {label}"] = run(kind, idle, checkpoints)
    table = [[name, f"{r['sessions']:,}", f"{r['scopes']:,}", f"{r['size_mib']:.1f}", f"{r['p50_ms']:.3f}",
              f"{r['p99_ms']:.3f}"] for name, rows in results.items() for r in rows]
    print_table("One request per session, one session per simulated second",
                ["store: sessions", "sessions", "scopes held", "size MiB", "p50 ms", "p99 ms"], table)
    write_json("idle_sessions", {"checkpoints": checkpoints, "results": results})


if __name__ == "__main__":
    main()
