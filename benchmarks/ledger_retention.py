"""Ledger retention: what each store keeps after 10k, 100k and 1M reserve+commit requests (issue 17, item 4).

Every request reserves in a two-scope chain and commits, as a routed request does. After each
checkpoint the benchmark reads what the ledger keeps: for the memory store the growth of the
process's resident memory (each store runs in a child process of its own), for SQLite the
finished rows and the file's size (database + WAL), for Redis the keys under the ledger's prefix and
their memory (MEMORY USAGE: the `done` sorted set plus a sample of hold keys times their count,
so other users of the server do not count), for PostgreSQL the finished rows and the holds table's
size on disk.

Target: flat from 100k to 1M. A ledger remembers at most `max_finished` finished reservations
(default 100,000; `--max-finished` to change it), so from 100k requests on what it keeps stops
growing. (The memory store's RSS steps up once after the bound is reached, ~17 → ~28 MB: CPython
resizes a dict that entries keep leaving to room for 3 × its live entries; flat after that.)

Clock: the real one. A run lasts minutes, far below the default retention of a day, so
the count bound alone decides what is kept here; the time window is tested with an injected
clock in tests/test_ledger_retention.py. To keep the run short, Redis and PostgreSQL get
`--workers` threads (default 4) and PostgreSQL runs with `synchronous_commit=off` (durability of
the last commits after a server crash, not what a ledger keeps).

`--baseline-src DIR` also measures the memory store of another tree (DIR holds its
`shared_core`, e.g. `git archive HEAD shared_core | tar -x -C DIR`) up to `--baseline-max`
requests (default 100,000: before the bound it grew about 54 MiB per 100,000).

`--max-requests STORE=N,...` stops a store at N requests (its last checkpoint): PostgreSQL takes
about an hour for 1M on a busy 2-core machine. A subset of stores or a --max-finished writes
ledger_retention-<stores>[-max<N>].json. Each store's results are kept in
<tmp>/omniroute-ledger-retention/ as it finishes; `--resume` reuses those of the same store,
tree, checkpoints and max_finished, so a run that was cut short need not measure them again.

Measured with: --sizes 10000,100000,1000000,2000000 --max-requests sqlite=1000000,redis=1000000
--stores memory,sqlite,redis --baseline-src DIR, and for PostgreSQL --stores postgres --max-finished
5000 --sizes 5000,20000,50000 (a smaller bound, and 10 × past it, for time).

Run: python benchmarks/ledger_retention.py [--sizes 10000,100000,1000000]
     [--stores memory,sqlite,redis,postgres] [--workers 4] [--max-finished N]
     [--max-requests postgres=150000] [--baseline-src DIR] [--baseline-max 100000] [--resume]
"""

from __future__ import annotations

import argparse
import gc
import json
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

CHAIN = ("tenant", "tenant/session")
HOLD, COST = 0.001, 0.000625
STORES = ("memory", "sqlite", "redis", "postgres")
PARTS = Path(tempfile.gettempdir()) / "omniroute-ledger-retention"
REDIS, POSTGRES = "redis://127.0.0.1:6379/0", "postgresql://postgres@127.0.0.1:5432/test"


def _rss_bytes() -> int:
    """This process's resident memory now (not its peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pairs(store: Any, n: int, workers: int) -> None:
    """n reserve+commit pairs on `store`, split over `workers` threads."""
    def run(count: int) -> None:
        for _ in range(count):
            rid = uuid.uuid4().hex
            store.reserve(rid, CHAIN, HOLD, ttl_s=600)
            store.commit(rid, COST, "m")

    shares = [n // workers + (i < n % workers) for i in range(workers)]
    if workers == 1:
        run(n)
        return
    threads = [threading.Thread(target=run, args=(k,)) for k in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _kept(kind: str, store: Any, start_rss: int) -> dict[str, Any]:
    """What the ledger keeps now: finished records, and their rows, keys or bytes."""
    if kind == "memory":
        gc.collect()
        return {"finished": len(store._done), "open": len(store._open), "bytes": _rss_bytes() - start_rss,
                "measure": "RSS growth"}
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(store.path) as db:
            finished, total = db.execute(
                "SELECT count(*) FILTER (WHERE status <> 'open'), count(*) FROM holds").fetchone()
        files = [store.path, Path(f"{store.path}-wal")]
        return {"finished": finished, "open": total - finished, "rows": total,
                "bytes": sum(p.stat().st_size for p in files if p.exists()), "measure": "file + WAL"}
    if kind == "redis":
        client, prefix = store.client, store.prefix
        holds = [k for k in client.scan_iter(match=prefix + "hold:*", count=5000)]
        opened = client.zcard(prefix + "open")
        sample = holds[:: max(1, len(holds) // 1000)][:1000]
        per_hold = sum(client.memory_usage(k) or 0 for k in sample) / max(1, len(sample))
        zsets = sum(client.memory_usage(prefix + z) or 0 for z in ("done", "open"))
        keys = sum(1 for _ in client.scan_iter(match=prefix + "*", count=5000))
        return {"finished": client.zcard(prefix + "done"), "open": opened, "keys": keys,
                "bytes": int(per_hold * len(holds) + zsets), "measure": "MEMORY USAGE"}
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as db:
        finished, total = db.execute(
            f'SELECT count(*) FILTER (WHERE status <> \'open\'), count(*) FROM "{store.schema}".holds').fetchone()
        size = db.execute("SELECT pg_total_relation_size(%s)", (f'"{store.schema}".holds',)).fetchone()[0]
    return {"finished": finished, "open": total - finished, "rows": total, "bytes": size,
            "measure": "holds table on disk"}


def _child(kind: str, sizes: list[int], workers: int, max_finished: int | None, out: Path) -> None:
    """Measure one store at each checkpoint; write the rows to `out` (JSON)."""
    from shared_core.budget import MAX_USD, Budget
    from shared_core.stores import open_store

    options = {} if max_finished is None else {"max_finished": max_finished}
    tmp = tempfile.mkdtemp()
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp}/ledger.db",
           "redis": f"{REDIS}?prefix=omniroute-retention:{uuid.uuid4().hex}:",
           "postgres": f"{POSTGRES}?schema=omniroute_retention_{uuid.uuid4().hex}"}[kind]
    if kind == "postgres":
        os.environ["PGOPTIONS"] = "-c synchronous_commit=off"
    store = open_store(url, **options)
    rows = []
    try:
        for scope in CHAIN:
            store.set_budget(scope, Budget(usd=MAX_USD))
        gc.collect()
        start_rss, done, t0 = _rss_bytes(), 0, time.perf_counter()
        for size in sizes:
            _pairs(store, size - done, 1 if kind in ("memory", "sqlite") else workers)
            done = size
            rows.append({"requests": size, "seconds": time.perf_counter() - t0, **_kept(kind, store, start_rss)})
            print(f"{kind}: {size} requests, {rows[-1]['finished']} finished kept", file=sys.stderr, flush=True)
    finally:
        if kind == "redis":
            keys = list(store.client.scan_iter(match=store.prefix + "*", count=5000))
            for i in range(0, len(keys), 5000):
                store.client.delete(*keys[i:i + 5000])
        store.close()
        if kind == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES, autocommit=True) as db:
                db.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
    out.write_text(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="checkpoints, in requests (cumulative)")
    parser.add_argument("--stores", default=",".join(STORES), help=f"stores to measure (default {','.join(STORES)})")
    parser.add_argument("--workers", type=int, default=4, help="threads for Redis and PostgreSQL (default 4)")
    parser.add_argument("--max-finished", type=int, default=None, help="the stores' max_finished (default theirs)")
    parser.add_argument("--baseline-src", default=None, help="another tree's source dir: its memory store too")
    parser.add_argument("--baseline-max", type=int, default=100_000,
                        help="the baseline's largest checkpoint (default 100000)")
    parser.add_argument("--max-requests", default="",
                        help="STORE=N,...: the most requests for a store (its last checkpoint)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the results of stores an earlier run finished (same settings)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.child:
        _child(args.child, sizes, args.workers, args.max_finished, Path(args.out))
        return
    kinds = args.stores.split(",")
    if not set(kinds) <= set(STORES):
        parser.error(f"--stores names only {', '.join(STORES)}")
    limits = {k: int(v) for k, _, v in (item.partition("=") for item in args.max_requests.split(",") if item)}
    if not set(limits) <= set(STORES):
        parser.error(f"--max-requests names only {', '.join(STORES)}")

    def upto(most: float) -> list[int]:
        return sorted({int(min(s, most)) for s in sizes})

    runs: list[tuple[str, str, str | None, list[int]]] = [
        ("this tree", k, None, upto(limits.get(k, float("inf")))) for k in kinds]
    if args.baseline_src:
        base = str(Path(args.baseline_src).resolve())
        runs.insert(0, ("baseline", "memory", base, upto(args.baseline_max)))
    results = []
    PARTS.mkdir(exist_ok=True)
    for tree, kind, src, checkpoints in runs:
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        bound = args.max_finished if src is None else None
        out = PARTS / f"{tree.split()[0]}-{kind}-{'-'.join(map(str, checkpoints))}-{bound or 'default'}.json"
        command = [sys.executable, __file__, "--child", kind, "--out", str(out), "--workers", str(args.workers),
                   "--sizes", ",".join(map(str, checkpoints))]
        if bound is not None:
            command += ["--max-finished", str(bound)]
        if args.resume and out.exists():
            print(f"{kind} ({tree}): reusing {out}", file=sys.stderr)
        else:
            out.unlink(missing_ok=True)
            try:
                subprocess.run(command, env=env, check=True)
            except subprocess.CalledProcessError as e:  # a server that is not there: say so, measure the rest
                print(f"skipping {kind} ({tree}): the child run failed ({e})")
                continue
        for row in json.loads(out.read_text()):
            results.append({"tree": tree, "store": kind, **row})
    table = [[r["tree"], r["store"], r["requests"], r["finished"], r["open"], r.get("rows", r.get("keys", "-")),
              r["bytes"] / 2**20, r["measure"], r["requests"] / r["seconds"]] for r in results]
    print_table("what a ledger keeps after N reserve+commit requests (max_finished "
                f"{args.max_finished or 'default: 100,000'})",
                ["tree", "store", "requests", "finished kept", "open", "rows / keys", "MiB", "measured as",
                 "requests/s"], table)
    name = "ledger_retention" + ("" if kinds == list(STORES) else "-" + "-".join(kinds)) \
        + ("" if args.max_finished is None else f"-max{args.max_finished}")
    write_json(name, {"sizes": sizes, "workers": args.workers, "max_finished": args.max_finished,
                                    "max_requests": limits, "baseline_src": args.baseline_src,
                                    "results": results})


if __name__ == "__main__":
    main()
