"""Cold start: importing each package, loading a saved router, and the first decision, each in a fresh process.

A default router (`fit_router` on RouterBench's train split, the default predictor; about 30 s) is
fitted once and saved to a temporary directory. Then every configuration below runs in its own
fresh interpreter, REPEAT times, the configurations interleaved (each round in a new random
order): `import litellm` (the baseline), `import shared_core`, `import omniroute_lc`,
`import omniroute_li`, the two frameworks alone (`BaseChatModel`, LlamaIndex's `LLM`: what an
adapter cannot be faster than), `Router.load` of the saved router
(`from shared_core import Router` and the load, timed apart), and load plus the first
`Router.decide` on a RouterBench test prompt (time to first decision; a second decision on
another prompt shows the steady state). Times are taken inside the child with perf_counter
(interpreter start-up excluded; the parent's wall time per process, start-up included, is
reported beside them), and each child lists the heavy packages it ended up importing.

It also sums the installed size of each install profile's dependency closure, read from this
environment's package metadata (same versions, no network): `pip install omniroute` (both
frameworks), LangChain only, LlamaIndex only (`pip install --no-deps omniroute` plus the
requirements, README "Installing only one framework"), and LiteLLM.

Target (issue 17): `from shared_core import Router` + `Router.load` under 0.5 s at the median.

Run: python benchmarks/cold_start.py [--repeat 7] [--router DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATA, ROOT, print_table, write_json

sys.path.insert(0, str(ROOT / "tests"))  # the dependency closure the import-independence test uses
from install_closure import dependency_closure  # noqa: E402

REPEAT = 7
TARGET_S = 0.5
HEAVY = ("scipy", "sklearn", "pandas", "pyarrow", "langchain_core", "langsmith", "llama_index", "litellm",
         "tiktoken", "asyncio", "genai_prices", "opentelemetry", "openai", "httpx", "aiohttp", "nltk")

# Each child runs PRELUDE, its body (which fills `phases` with seconds), then reports.
PRELUDE = "import json, sys, time\nphases = {}\n"
REPORT = (
    "print('RESULT ' + json.dumps({'phases': phases, 'modules': len(sys.modules), "
    "'heavy': sorted({m.partition('.')[0] for m in sys.modules} & set(HEAVY))}))"
)


def _timed(name: str, code: str) -> str:
    return f"t = time.perf_counter()\n{code}\nphases[{name!r}] = time.perf_counter() - t\n"


def configurations(router_dir: str, prompts: tuple[str, str]) -> dict[str, str]:
    """Each configuration's child body, by name."""
    load = _timed("import", "from shared_core import Router") + _timed("load", f"router = Router.load({router_dir!r})")
    first, second = ([{"role": "user", "content": p}] for p in prompts)
    return {
        "import litellm (baseline)": _timed("total", "import litellm"),
        "import shared_core": _timed("total", "import shared_core"),
        "import omniroute_lc": _timed("total", "import omniroute_lc"),
        "import omniroute_li": _timed("total", "import omniroute_li"),
        "framework alone: LangChain": _timed("total", "from langchain_core.language_models import BaseChatModel"),
        "framework alone: LlamaIndex": _timed("total", "from llama_index.core.llms import LLM"),
        "Router.load": load + "phases['total'] = phases['import'] + phases['load']\n",
        "load + first decide": load + _timed("first decide", f"router.decide({first!r})")
        + "phases['total'] = phases['import'] + phases['load'] + phases['first decide']\n"
        + _timed("second decide", f"router.decide({second!r})"),
    }


def run_child(body: str) -> dict:
    """Run one configuration in a fresh interpreter; its phases, module counts and wall time."""
    script = PRELUDE + f"HEAVY = {HEAVY!r}\n" + body + REPORT
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "wall": wall}


def fit_default_router(directory: Path) -> tuple[float, tuple[str, str]]:
    """Fit the default router on RouterBench's train split and save it; fit seconds and two test prompts."""
    from shared_core.data import load_dataset
    from shared_core.fitting import fit_router

    dataset = load_dataset(DATA / "routerbench_subset.parquet")
    started = time.perf_counter()
    router = fit_router(dataset.subset("train"))
    seconds = time.perf_counter() - started
    router.save(directory)
    test = dataset.subset("test").prompts
    return seconds, (test[0], test[1])


def test_prompts() -> tuple[str, str]:
    from shared_core.data import load_dataset

    test = load_dataset(DATA / "routerbench_subset.parquet").subset("test").prompts
    return test[0], test[1]


# ---------------------------------------------------------------- install sizes

def _installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or ():
        try:
            total += os.path.getsize(file.locate())
        except OSError:
            pass  # listed in RECORD but not on disk (e.g. a .pyc never compiled)
    return total


def install_sizes() -> dict[str, dict[str, float]]:
    """Distributions and MiB of each install profile's closure, from this environment's metadata."""
    import tomllib

    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    profiles = {
        "pip install omniroute (both frameworks)": core,
        "LangChain only (--no-deps + requirements)": [r for r in core if not r.startswith("llama-index")],
        "LlamaIndex only (--no-deps + requirements)": [r for r in core if not r.startswith("langchain")],
        "neither framework (shared_core alone)": [r for r in core if not r.startswith(("langchain", "llama-index"))],
        "litellm (baseline)": ["litellm"],
    }
    out = {}
    for name, requirements in profiles.items():
        dists = dependency_closure(requirements)
        out[name] = {"distributions": len(dists), "mib": sum(map(_installed_bytes, dists.values())) / 2**20}
    return out


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=REPEAT, help="fresh processes per configuration")
    parser.add_argument("--router", help="a saved router directory to load instead of fitting one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="omniroute-cold-") as tmp:
        if args.router:
            router_dir, fit_s, prompts = args.router, None, test_prompts()
        else:
            router_dir = str(Path(tmp) / "router")
            fit_s, prompts = fit_default_router(Path(router_dir))
            print(f"fitted the default router in {fit_s:.1f} s; saved to {router_dir}")
        size = sum(p.stat().st_size for p in Path(router_dir).iterdir() if p.is_file())
        configs = configurations(router_dir, prompts)
        samples: dict[str, list[dict]] = {name: [] for name in configs}
        order = list(configs)
        rng = random.Random(0)
        for _ in range(args.repeat):
            rng.shuffle(order)
            for name in order:
                samples[name].append(run_child(configs[name]))

    baseline = float(np.median([s["phases"]["total"] for s in samples["import litellm (baseline)"]]))
    rows, results = [], {}
    for name, runs in samples.items():
        phases = {p: [r["phases"][p] for r in runs] for p in runs[0]["phases"]}
        median = {p: float(np.median(v)) * 1e3 for p, v in phases.items()}
        total = phases["total"]
        results[name] = {
            "median_ms": median,
            "min_total_ms": float(np.min(total)) * 1e3,
            "max_total_ms": float(np.max(total)) * 1e3,
            "median_process_wall_ms": float(np.median([r["wall"] for r in runs])) * 1e3,
            "vs_litellm_import": float(np.median(total)) / baseline,
            "modules": runs[0]["modules"],
            "heavy_imports": runs[0]["heavy"],
            "samples_s": phases,
        }
        detail = ", ".join(f"{p} {v:.0f}" for p, v in median.items() if p != "total")
        row = results[name]
        rows.append([name, round(median["total"]), round(row["min_total_ms"]), round(row["max_total_ms"]),
                     round(row["median_process_wall_ms"]), f"{row['vs_litellm_import']:.2f}", detail or "-",
                     " ".join(runs[0]["heavy"])])
    print_table(f"Fresh-process times, ms ({args.repeat} interleaved runs each; python {sys.version.split()[0]})",
                ["configuration", "median", "min", "max", "process wall", "× litellm", "phases (median ms)",
                 "heavy packages imported"], rows)

    load_ms = results["Router.load"]["median_ms"]["total"]
    met = load_ms < TARGET_S * 1e3
    print(f"\nRouter.load (import + load) median {load_ms:.0f} ms: target < {TARGET_S * 1e3:.0f} ms "
          f"{'MET' if met else 'NOT MET'}; saved router {size / 2**20:.1f} MiB")
    first = results["load + first decide"]["median_ms"]
    print(f"time to first decision {first['total']:.0f} ms (first decide {first['first decide']:.0f} ms, "
          f"second {first['second decide']:.1f} ms)")

    sizes = install_sizes()
    print_table("Installed size of each profile's dependency closure (this environment's versions)",
                ["profile", "distributions", "MiB"],
                [[name, s["distributions"], f"{s['mib']:.0f}"] for name, s in sizes.items()])
    write_json("cold_start", {
        "repeat": args.repeat, "fit_s": fit_s, "saved_router_bytes": size, "target_load_ms": TARGET_S * 1e3,
        "target_met": met, "results": results, "install_sizes": sizes,
    })


if __name__ == "__main__":
    main()
