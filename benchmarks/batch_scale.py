"""Batch routing at scale: memory per prompt and prompts/s of route_batch and of `omniroute route`.

What it measures, with the default router (`fit_router` on RouterBench's training split, the
default predictor; fitted once and saved, loaded by every worker):

1. Embedding. `TfidfSvdEmbedder.transform([prompt])` per RouterBench test prompt (p50), with a cold
   paragraph memo (cleared before each call) and warm (50 training prompts embedded first, then the
   test prompts in order, as a service sees them), and `transform` of 10,000 synthesized prompts
   in 1,000-prompt chunks (as route_batch calls it). The baseline is the implementation before
   issue 17 (embed.py and ngrams.py at commit 6f58c1c, read with `git show`), timed interleaved
   with the current one in the same process; the two must agree within 5e-6 (the current path
   projects before normalising, and its float32 sums round differently).
2. route_batch (`shared_core.batch.route_batch`, chunks of 1,000) on 10k, 100k and 1M distinct
   prompts synthesized from both shared datasets (a random base prompt with two words and a
   number inserted in its last line). Each size runs in a fresh process: load the router,
   synthesize the prompts, route 1,000 other prompts (encodings, caches), then reset the peak RSS
   (/proc/self/clear_refs) and route. Peak growth per prompt = (peak RSS − RSS after setup) / n;
   ru_maxrss gives the same figure where the reset is not possible. Stage times come from timing
   wrappers around router.estimate, the embedder, both predictors and the solve: "tokens + rest"
   is estimate time not spent embedding or predicting (token counting, pricing, arrays). The
   baseline — one estimate of the whole batch, then the solver, as Router.route_batch did — runs
   at 10k in its own process, and must give the same plan.
3. `omniroute route` on a JSONL file of 1M such prompts (and of 10k, to subtract the fixed part),
   with --out: the command's peak RSS (ru_maxrss of the child) and prompts/s over its whole run
   (reading, estimating, solving, writing the plan).

Targets: single-prompt transform p50 ≤ 0.15 ms; batch transform at least as fast as before;
route_batch ≤ 8 KiB peak growth per prompt, flat from 10k to 1M, ≥ 5,000 prompts/s; the
command in bounded memory at 1M prompts.

Run: python benchmarks/batch_scale.py                     # 10k, 100k, 1M and the command at 1M
     python benchmarks/batch_scale.py --sizes 10000 --cli-size 10000   # a short run
     (--sections embed,route,cli picks parts, each kept in the results file until run again;
      --router DIR keeps the fitted router there for later runs instead of refitting it, ~1 min)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from _common import DATA, RESULTS, ROOT, percentiles_ms, print_table, write_json

BASELINE_COMMIT = "6f58c1c"  # before issue 17: the scipy.sparse embedding and whole-batch route_batch
WARMUP = 1_000
KIB = 1024


# ----------------------------------------------------------------------------- prompts
def prompt_pool() -> list[str]:
    """Every distinct prompt of both shared datasets."""
    from shared_core.data import load_dataset

    rb = load_dataset(DATA / "routerbench_subset.parquet")
    llm = load_dataset(DATA / "llmrouter_dcrouter.parquet", prices=DATA / "llmrouter_dcrouter_prices.json")
    return list(dict.fromkeys(rb.prompts + llm.prompts))


def synthesize(pool: list[str], n: int, seed: int) -> list[str]:
    """n distinct prompts: a random base prompt with two of its corpus's words and a number put into its last line."""
    rng = np.random.default_rng(seed)
    words = sorted({w for p in pool[::5] for w in p.split() if w.isalpha() and 3 <= len(w) <= 10})
    base = rng.integers(0, len(pool), n).tolist()
    picks = rng.integers(0, len(words), (n, 2)).tolist()
    out = []
    for i in range(n):
        head, sep, last = pool[base[i]].rpartition("\n")
        cut = len(last) // 2
        a, b = picks[i]
        out.append(f"{head}{sep}{last[:cut]} {words[a]} {words[b]} #{seed}-{i}{last[cut:]}")
    return out


def budget_per_prompt() -> float:
    """A quarter of what the most accurate RouterBench model cost per prompt: a budget that binds."""
    from shared_core.data import load_dataset
    from shared_core.evaluate import reference_column

    rb = load_dataset(DATA / "routerbench_subset.parquet")
    return 0.25 * float(np.nanmean(rb.cost[:, reference_column(rb.quality)]))


# ----------------------------------------------------------------------------- memory
def _status(field: str) -> int:
    """A /proc/self/status figure in KiB (VmRSS, VmHWM)."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())[1])


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ----------------------------------------------------------------------------- baseline code
def baseline_embedder(embedder):
    """The embedder as it was before issue 17 (embed.py, ngrams.py at BASELINE_COMMIT) with the same fitted state."""
    package = "baseline_shared_core"
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = []
        sys.modules[package] = pkg
        import shared_core.errors
        import shared_core.quality.base

        sys.modules[f"{package}.errors"] = shared_core.errors
        sys.modules[f"{package}.quality"] = sys.modules["shared_core.quality"]
        sys.modules[f"{package}.quality.base"] = shared_core.quality.base
        for name in ("ngrams", "embed"):
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:shared_core/{name}.py"],
                                    check=True, capture_output=True, text=True).stdout
            module = types.ModuleType(f"{package}.{name}")
            module.__package__ = package
            sys.modules[module.__name__] = module
            exec(compile(source, f"{BASELINE_COMMIT}:shared_core/{name}.py", "exec"), module.__dict__)
    old = sys.modules[f"{package}.embed"].TfidfSvdEmbedder(**embedder.get_params())
    old._restore(*embedder._state())
    return old


# ----------------------------------------------------------------------------- workers
def worker_embed(router_dir: str) -> dict:
    """Section 1: single-prompt p50 (cold and warm memo) and chunked batch transform, new vs baseline."""
    from shared_core.data import load_dataset
    from shared_core.router import Router

    embedder = Router.load(router_dir).embedder
    old = baseline_embedder(embedder)
    rb = load_dataset(DATA / "routerbench_subset.parquet")
    test, train = rb.subset("test").prompts, rb.subset("train").prompts
    counter = embedder._counters[0]
    np.testing.assert_allclose(embedder.transform(test), old.transform(test), atol=5e-6)

    def single(cold: bool) -> tuple[list[float], list[float], list[float], list[float]]:
        new_s, old_s, new_cpu, old_cpu = [], [], [], []
        counter._memo, counter._memo_chars = {}, 0
        for p in train[:50]:
            embedder.transform([p])
            old.transform([p])
        # Interleaved by blocks of 50 prompts: alternating every call would time each one with
        # the caches the other left behind.
        for i in range(0, len(test), 50):
            for p in test[i:i + 50]:
                if cold:
                    counter._memo, counter._memo_chars = {}, 0
                c0, t0 = time.thread_time(), time.perf_counter()
                embedder.transform([p])
                new_s.append(time.perf_counter() - t0)
                new_cpu.append(time.thread_time() - c0)
            for p in test[i:i + 50]:
                c0, t0 = time.thread_time(), time.perf_counter()
                old.transform([p])
                old_s.append(time.perf_counter() - t0)
                old_cpu.append(time.thread_time() - c0)
        return new_s, old_s, new_cpu, old_cpu

    out: dict = {"single": {}}
    for label, cold in (("cold memo", True), ("warm memo", False)):
        runs = [single(cold) for _ in range(3)]
        new = min((percentiles_ms(r[0]) for r in runs), key=lambda x: x["p50_ms"])
        base = min((percentiles_ms(r[1]) for r in runs), key=lambda x: x["p50_ms"])
        # CPU time leaves out the time the process waited for a core (the machine is shared).
        new["cpu_p50_ms"] = min(float(np.median(r[2])) * 1e3 for r in runs)
        base["cpu_p50_ms"] = min(float(np.median(r[3])) * 1e3 for r in runs)
        out["single"][label] = {"new": new, "baseline": base}
    prompts = synthesize(prompt_pool(), 10_000, seed=7)
    chunks = [prompts[i:i + 1000] for i in range(0, len(prompts), 1000)]
    new_t, old_t = [], []
    for _ in range(3):
        counter._memo, counter._memo_chars = {}, 0
        t0 = time.perf_counter()
        for c in chunks:
            embedder.transform(c)
        t1 = time.perf_counter()
        for c in chunks:
            old.transform(c)
        t2 = time.perf_counter()
        new_t.append(t1 - t0)
        old_t.append(t2 - t1)
    out["batch"] = {"prompts": len(prompts), "new_s": min(new_t), "baseline_s": min(old_t)}
    out["loadavg"] = os.getloadavg()
    return out


def _timed(owner, name: str, totals: dict, key: str) -> None:
    """Replace owner.name by a wrapper adding its wall time to totals[key]."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)


def worker_route(router_dir: str, n: int, whole: bool) -> dict:
    """Section 2: one route_batch of n prompts (whole=True: the pre-issue-17 whole-batch way instead)."""
    from shared_core import batch
    from shared_core.router import Router

    router = Router.load(router_dir)
    pool = prompt_pool()
    budget = budget_per_prompt()
    prompts = synthesize(pool, n, seed=1)
    batch.route_batch(router, synthesize(pool, WARMUP, seed=2), budget=budget * WARMUP)
    del pool
    gc.collect()
    rss0, maxrss0 = _status("VmRSS"), maxrss_kib()
    resettable = reset_peak()
    totals: dict[str, float] = {}
    if not whole:
        _timed(router, "estimate", totals, "estimate")
        _timed(router.embedder, "transform", totals, "embed")
        _timed(router.quality, "predict", totals, "predict")
        _timed(router.lengths, "predict", totals, "predict")
        _timed(batch, "solve_collected", totals, "solve")
    t0 = time.perf_counter()
    if whole:
        from shared_core.feasibility import output_caps
        from shared_core.solver import solve

        est = router.estimate(prompts)
        limits = [np.array([getattr(router.candidate(c), a) for c in est.candidates], dtype=np.float64)
                  for a in ("max_output_tokens", "context_window")]
        choice = solve(est.quality, est.cost, budget=budget * n,
                       feasible=output_caps(est.input_tokens, *limits, None) >= 1).choice
    else:
        choice = batch.route_batch(router, prompts, budget=budget * n).solution.choice
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") if resettable else maxrss_kib()
    stages = {}
    if not whole:
        stages = {"tokens + rest": totals["estimate"] - totals["embed"] - totals["predict"],
                  "embed": totals["embed"], "predict": totals["predict"], "solve": totals["solve"],
                  "other": seconds - totals["estimate"] - totals["solve"]}
    return {"prompts": n, "whole_batch": whole, "seconds": seconds, "prompts_per_s": n / seconds,
            "rss_after_setup_kib": rss0, "peak_kib": peak, "peak_reset": resettable,
            "maxrss_before_kib": maxrss0, "maxrss_after_kib": maxrss_kib(),
            "growth_per_prompt_kib": (peak - rss0) / n, "stages_s": stages,
            "choice_sha": _digest(choice), "loadavg": os.getloadavg()}


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


def worker_write(path: str, n: int) -> dict:
    """Write n synthesized prompts as JSONL (id, prompt) for the command."""
    prompts = synthesize(prompt_pool(), n, seed=3)
    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"id": f"p{i}", "prompt": p}) + "\n")
    return {"bytes": os.path.getsize(path)}


# ----------------------------------------------------------------------------- driver
def run_worker(*args: str) -> dict:
    """Run this script as a worker in a fresh process; its result (JSON on the last stdout line)."""
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    if proc.returncode:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(router_dir: str, path: str, out: str, budget: float) -> dict:
    """`omniroute route` in a child process: its wall time, peak RSS (the child's ru_maxrss) and routing time."""
    args = [sys.executable, "-m", "shared_core.cli", "route", router_dir, path, "--budget", repr(budget),
            "--out", out]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's maximum
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        printed, progress = stdout.read(), stderr.read()
    if proc.returncode:
        raise RuntimeError(f"omniroute route failed:\n{progress[-4000:]}")
    routed = re.search(r"(\d+) prompts routed in ([\d.]+) s", printed)
    return {"seconds": seconds, "routed_s": float(routed[2]), "prompts": int(routed[1]),
            "peak_kib": usage.ru_maxrss, "progress_lines": len(progress.splitlines())}


def fit_default_router(directory: Path) -> None:
    from shared_core.data import load_dataset
    from shared_core.fitting import fit_router

    train = load_dataset(DATA / "routerbench_subset.parquet").subset("train")
    fit_router(train).save(directory)


def section_embed(router_dir: str) -> dict:
    emb = run_worker("embed", router_dir)
    rows = [[label, f"{v['new']['p50_ms']:.3f}", f"{v['new']['p99_ms']:.3f}", f"{v['new']['cpu_p50_ms']:.3f}",
             f"{v['baseline']['p50_ms']:.3f}", f"{v['baseline']['cpu_p50_ms']:.3f}",
             f"{v['baseline']['p50_ms'] / v['new']['p50_ms']:.1f}×", "yes" if v["new"]["p50_ms"] <= 0.15 else "NO"]
            for label, v in emb["single"].items()]
    print_table(f"Single-prompt transform, RouterBench test prompts (946; best p50 of 3 runs interleaved by "
                f"blocks of 50; load average {emb['loadavg'][0]:.1f} on {os.cpu_count()} CPUs)",
                ["memo", "p50 ms", "p99 ms", "CPU p50 ms", "baseline p50 ms", "baseline CPU p50 ms", "speed-up",
                 "p50 ≤ 0.15 ms"], rows)
    b = emb["batch"]
    print_table("Batch transform, 10,000 synthesized prompts in chunks of 1,000 (best of 3, interleaved)",
                ["prompts", "s", "prompts/s", "baseline s", "speed-up", "≥ baseline"],
                [[b["prompts"], f"{b['new_s']:.3f}", f"{b['prompts'] / b['new_s']:,.0f}", f"{b['baseline_s']:.3f}",
                  f"{b['baseline_s'] / b['new_s']:.2f}×", "yes" if b["new_s"] <= b["baseline_s"] else "NO"]])
    return emb


def section_route(router_dir: str, sizes: list[int]) -> dict:
    routes = [run_worker("route", router_dir, str(n), "chunked") for n in sizes]
    out: dict = {"chunked": routes}
    if 10_000 in sizes:
        out["whole_batch_10k"] = run_worker("route", router_dir, "10000", "whole")
        out["same_plan_10k"] = out["whole_batch_10k"]["choice_sha"] == routes[sizes.index(10_000)]["choice_sha"]
    rows = []
    for r in [*routes, *([out["whole_batch_10k"]] if "whole_batch_10k" in out else [])]:
        rows.append([f"{r['prompts']:,}", "whole (before)" if r["whole_batch"] else "chunks of 1,000",
                     f"{r['growth_per_prompt_kib']:.2f}", f"{r['peak_kib'] / KIB:,.0f}", f"{r['seconds']:.1f}",
                     f"{r['prompts_per_s']:,.0f}", "yes" if r["growth_per_prompt_kib"] <= 8 else "NO",
                     "yes" if r["prompts_per_s"] >= 5000 else "NO", f"{r['loadavg'][0]:.1f}"])
    print_table("route_batch: peak RSS growth per prompt and throughput (fresh process per row)",
                ["prompts", "estimation", "KiB/prompt", "peak MiB", "s", "prompts/s", "≤ 8 KiB", "≥ 5,000/s",
                 "load"], rows)
    if routes:
        print_table("route_batch stages (seconds, share of the run)", ["prompts", *routes[0]["stages_s"]],
                    [[f"{r['prompts']:,}", *(f"{s:.2f} ({s / r['seconds']:.0%})" for s in r["stages_s"].values())]
                     for r in routes])
    if "same_plan_10k" in out:
        print(f"\nsame plan as the whole-batch estimate at 10,000 prompts: {out['same_plan_10k']}")
    return out


def section_cli(router_dir: str, size: int, tmp: str) -> dict:
    budget = budget_per_prompt()
    cli: dict = {}
    for n in sorted({10_000, size}):
        path = str(Path(tmp) / f"prompts_{n}.jsonl")
        written = run_worker("write", path, str(n))
        try:
            cli[n] = {**run_cli(router_dir, path, str(Path(tmp) / f"plan_{n}.csv"), budget * n),
                      "file_bytes": written["bytes"], "loadavg": os.getloadavg()}
        finally:
            os.unlink(path)
    small, big = cli[min(cli)], cli[max(cli)]
    if len(cli) > 1:
        grown = big["peak_kib"] - small["peak_kib"]
        big["growth_per_prompt_kib"] = grown / (big["prompts"] - small["prompts"])
    print_table("`omniroute route FILE.jsonl --budget B --out plan.csv` (whole command, fresh process)",
                ["prompts", "file MiB", "peak RSS MiB", "KiB/prompt over the 10k run", "wall s", "prompts/s (wall)",
                 "routed in s", "load"],
                [[f"{r['prompts']:,}", f"{r['file_bytes'] / KIB**2:,.0f}", f"{r['peak_kib'] / KIB:,.0f}",
                  f"{r['growth_per_prompt_kib']:.2f}" if "growth_per_prompt_kib" in r else "–", f"{r['seconds']:.1f}",
                  f"{r['prompts'] / r['seconds']:,.0f}", f"{r['routed_s']:.1f}", f"{r['loadavg'][0]:.1f}"]
                 for r in cli.values()])
    return {str(n): r for n, r in cli.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="embed,route,cli", help="which to run (comma-separated)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="route_batch sizes (comma-separated)")
    parser.add_argument("--cli-size", type=int, default=1_000_000, help="prompts in the command's file")
    parser.add_argument("--router", help="a saved default router (fitted and saved there when the directory "
                                         "does not exist; default: fit one into a temporary directory)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = {"embed": lambda: worker_embed(rest[0]),
                  "route": lambda: worker_route(rest[0], int(rest[1]), rest[2] == "whole"),
                  "write": lambda: worker_write(rest[0], int(rest[1]))}[kind]()
        print(json.dumps(result))
        return
    sections = [s for s in args.sections.split(",") if s]
    # Sections may be run separately (the command at 1M takes most of an hour here): each run
    # replaces its sections in the results file and keeps the others.
    previous = RESULTS_FILE.exists() and json.loads(RESULTS_FILE.read_text()).get("sections", {})
    results: dict = dict(previous or {})
    with tempfile.TemporaryDirectory(prefix="batch_scale_") as tmp:
        router_dir = args.router or str(Path(tmp) / "router")
        if not Path(router_dir).exists():
            t0 = time.perf_counter()
            fit_default_router(Path(router_dir))
            print(f"fitted the default router in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for section in sections:
            if section == "embed":
                results["embed"] = section_embed(router_dir)
            elif section == "route":
                results["route_batch"] = section_route(router_dir, [int(s) for s in args.sizes.split(",") if s])
            elif section == "cli":
                results["cli"] = section_cli(router_dir, args.cli_size, tmp)
            else:
                raise SystemExit(f"unknown section {section!r}: choose from embed, route, cli")
            results[f"{section}_finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            write_json("batch_scale", {"sections": results})


RESULTS_FILE = RESULTS / "batch_scale.json"

if __name__ == "__main__":
    main()
