"""Each package works without the framework it does not need (issue 17): the core without either,
the LangChain adapter without LlamaIndex, the LlamaIndex adapter without LangChain.

Each check runs in a fresh interpreter whose first import hook refuses (ModuleNotFoundError, as
an absent package does) every top-level module that only the other framework brings: the
framework itself and each distribution in its dependency closure that nothing else OmniRoute
installs needs (read from the installed packages' metadata, so a one-framework environment is
simulated as pip would build it). In there it imports every module of the allowed packages, fits
a router, saves and loads it, routes, and (for an adapter) calls through a fake model and checks
the money was committed.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 reads pyproject.toml
from install_closure import dependency_closure  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402  # after the skip, as its guard intends
from packaging.utils import canonicalize_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LANGCHAIN = "langchain-core"
LLAMAINDEX = "llama-index-core"
# Top-level name prefixes each framework owns whatever its metadata says (langchain_openai, langgraph,
# llama_index namespace packages), and modules that must be blocked for a run to mean anything.
FRAMEWORK_PREFIXES = {LANGCHAIN: ("langchain", "langsmith", "langgraph"), LLAMAINDEX: ("llama_index",)}
PROBES = {LANGCHAIN: ["langchain_core.language_models", "langsmith", "langchain.agents"],
          LLAMAINDEX: ["llama_index.core.llms"]}


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installs."""
    listed = dist.read_text("top_level.txt")
    if listed:
        return {line.strip() for line in listed.splitlines() if line.strip()}
    names = set()
    for file in dist.files or ():
        head = file.parts[0]
        if head.endswith((".dist-info", ".data")) or head in ("..", "__pycache__"):
            continue
        name = head[:-3] if head.endswith(".py") else head.split(".")[0] if "." in head else head
        if name.isidentifier():
            names.add(name)
    return names


def _blocked(framework: str, keep_extras: Iterable[str]) -> list[str]:
    """Top-level modules only `framework` brings: its closure minus what everything else installs needs."""
    core = PYPROJECT["dependencies"]
    extras = PYPROJECT["optional-dependencies"]
    other = [r for r in core if canonicalize_name(Requirement(r).name) != framework]
    other += [r for extra in keep_extras for r in extras[extra] if not r.startswith("omniroute[")]
    other += INSTALLERS
    kept = dependency_closure(other)
    own = {name: dist for name, dist in dependency_closure([framework]).items() if name not in kept}
    return sorted(m for d in own.values() for m in _top_level(d))


# Extras a one-framework user may add; each adapter's own extras stay allowed for it.
NEUTRAL_EXTRAS = ["data", "redis", "postgres", "plot", "prices", "otel"]
LANGCHAIN_EXTRAS = [*NEUTRAL_EXTRAS, "langchain", "agents"]
LLAMAINDEX_EXTRAS = [*NEUTRAL_EXTRAS, "llamaindex"]
# Every environment has its installer (setuptools' .pth hook is imported before any test code runs).
INSTALLERS = ["pip", "setuptools", "wheel"]

BLOCKER = """
import importlib.abc, json, os, sys

BLOCKED = json.loads(os.environ["OMNIROUTE_BLOCKED"])
PREFIXES = tuple(json.loads(os.environ["OMNIROUTE_BLOCKED_PREFIXES"]))


def absent(name):
    top = name.partition(".")[0]
    return top in BLOCKED or top.startswith(PREFIXES)


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if absent(name):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not installed in this setup)", name=name)
        return None


already = sorted(m for m in sys.modules if absent(m))
assert not already, f"imported before the blocker: {already}"
sys.meta_path.insert(0, Absent())
"""

# Shared by every scenario: the hook works, every module of the allowed packages imports, and a
# router fitted on two topics routes each to the model that answers it.
COMMON = """
import importlib, pkgutil, tempfile
import numpy as np

for name in PROBES:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(f"{name} was not blocked")

imported = []
for package in PACKAGES:
    root = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)

from shared_core import Budget, Candidate, Router
from shared_core.data import RoutingDataset
from shared_core.fitting import fit_router
from shared_core.selection import PredictorSpec

MATH = [f"Compute {a} plus {a + 7} and then multiply the sum by {a % 5 + 2}." for a in range(30)]
TRIVIA = [f"Which river flows through city number {a} of the old atlas, and who named it?" for a in range(30)]
prompts = MATH + TRIVIA
models = ["small", "big"]
# The big model answers the arithmetic, the small one the trivia (and the big one fails it).
quality = np.array([[0.0, 1.0]] * len(MATH) + [[1.0, 0.0]] * len(TRIVIA))
n = len(prompts)
dataset = RoutingDataset(
    prompts=prompts, models=models, quality=quality, cost=None, responses=None,
    task=np.array(["math"] * len(MATH) + ["trivia"] * len(TRIVIA), dtype=object),
    split=np.array(["train"] * n, dtype=object), sample_ids=np.array([str(i) for i in range(n)], dtype=object),
)
candidates = [Candidate(name="small", input_price=0.15, output_price=0.60),
              Candidate(name="big", input_price=2.50, output_price=10.00)]
# k = 10 of 60 prompts: a question's neighbours are its own topic's prompts.
fitted = fit_router(dataset, PredictorSpec.of("knn", k=10), candidates=candidates, warm_start=False)
saved = tempfile.mkdtemp()
fitted.save(saved)
QUESTION_MATH = "Compute 12 plus 19 and then multiply the sum by 3."
QUESTION_TRIVIA = "Which river flows through city number 7 of the old atlas, and who named it?"
result = {"imported": imported}
"""

CORE = COMMON + """
router = Router.load(saved, default_budget=Budget(usd=1.0))
math_decision = router.decide(QUESTION_MATH)
trivia_decision = router.decide([{"role": "user", "content": QUESTION_TRIVIA}])
cost = router.settle(math_decision, output_tokens=40)
result.update(
    math=math_decision.chosen, trivia=trivia_decision.chosen, settled=cost,
    quality_loaded=math_decision.quality, quality_fitted=fitted.decide(QUESTION_MATH).quality,
    committed=router.budget_state(router.scope_of(None)).committed,
)
"""

LANGCHAIN_SCENARIO = COMMON + """
from omniroute_lc import ChatOmniRoute
from omniroute_lc.fakes import FakeToolChatModel

router = Router.load(saved, models={m: FakeToolChatModel(model_name=m) for m in models},
                     default_budget=Budget(usd=1.0))
chat = ChatOmniRoute(router=router)
math_record = chat.invoke(QUESTION_MATH).response_metadata["omniroute"]
trivia_record = chat.invoke(QUESTION_TRIVIA).response_metadata["omniroute"]
result.update(
    math=math_record["model"], trivia=trivia_record["model"],
    settled=math_record["actual_cost_usd"] + trivia_record["actual_cost_usd"],
    committed=router.budget_state(router.scope_of(None)).committed,
    usage_source=[math_record["usage_source"], trivia_record["usage_source"]],
)
"""

LLAMAINDEX_SCENARIO = COMMON + """
sys.path.insert(0, TESTS)
from li_fakes import UsageLLM
from llama_index.core.llms import ChatMessage
from omniroute_li import OmniRouteLLM

router = Router.load(saved, models={m: UsageLLM(label=m) for m in models}, default_budget=Budget(usd=1.0))
llm = OmniRouteLLM(router=router)
records = [llm.chat([ChatMessage(role="user", content=q)]).additional_kwargs["omniroute"]
           for q in (QUESTION_MATH, QUESTION_TRIVIA)]
result.update(
    math=records[0]["model"], trivia=records[1]["model"], settled=sum(r["actual_cost_usd"] for r in records),
    committed=router.budget_state(router.scope_of(None)).committed,
    usage_source=[r["usage_source"] for r in records],
)
"""


def run_without(frameworks: list[str], blocked: list[str], packages: list[str], scenario: str) -> dict:
    """Run `scenario` in a fresh interpreter where `frameworks` and `blocked` modules cannot be
    imported; its `result`, as JSON."""
    script = "\n".join([
        BLOCKER,
        f"PACKAGES = {packages!r}",
        f"PROBES = {[probe for f in frameworks for probe in PROBES[f]]!r}",
        f"TESTS = {str(ROOT / 'tests')!r}",
        textwrap.dedent(scenario),
        "print('RESULT ' + json.dumps(result, default=float))",
    ])
    prefixes = [prefix for f in frameworks for prefix in FRAMEWORK_PREFIXES[f]]
    env = {**os.environ, "OMNIROUTE_BLOCKED": json.dumps(blocked), "OMNIROUTE_BLOCKED_PREFIXES": json.dumps(prefixes)}
    env.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken_cache"))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def check_routing(result: dict, packages: list[str]) -> None:
    """Both questions went to the model that answers their topic, and the calls were paid for."""
    assert result["math"] == "big" and result["trivia"] == "small"
    assert result["settled"] > 0
    assert result["committed"] == pytest.approx(result["settled"], rel=1e-6)
    for package in packages:
        assert package in result["imported"]
    # Every module of each package was imported, not just its __init__.
    assert sum(name.startswith("shared_core.") for name in result["imported"]) >= 30


def test_blocked_sets_hold_each_framework_and_only_it():
    without_langchain = _blocked(LANGCHAIN, LLAMAINDEX_EXTRAS)
    without_llamaindex = _blocked(LLAMAINDEX, LANGCHAIN_EXTRAS)
    assert {"langchain_core", "langsmith"} <= set(without_langchain)
    assert not any(name.startswith("llama") for name in without_langchain)
    assert {"llama_index", "nltk"} <= set(without_llamaindex)
    assert not any(name.startswith("lang") for name in without_llamaindex)
    for shared in ("numpy", "pydantic", "sklearn", "scipy", "tiktoken", "pandas", "setuptools", "_distutils_hack"):
        assert shared not in without_langchain and shared not in without_llamaindex


@pytest.mark.slow
def test_the_core_needs_neither_framework():
    blocked = sorted({*_blocked(LANGCHAIN, NEUTRAL_EXTRAS), *_blocked(LLAMAINDEX, NEUTRAL_EXTRAS)})
    result = run_without([LANGCHAIN, LLAMAINDEX], blocked, ["shared_core"], CORE)
    check_routing(result, ["shared_core"])
    assert result["settled"] == pytest.approx(result["committed"])
    # The loaded router predicts what the fitted one did.
    assert result["quality_loaded"] == pytest.approx(result["quality_fitted"])
    assert not any(name.startswith("omniroute_") for name in result["imported"])


@pytest.mark.slow
def test_the_langchain_adapter_needs_no_llamaindex():
    blocked = _blocked(LLAMAINDEX, LANGCHAIN_EXTRAS)
    result = run_without([LLAMAINDEX], blocked, ["shared_core", "omniroute_lc"], LANGCHAIN_SCENARIO)
    check_routing(result, ["shared_core", "omniroute_lc"])
    assert "omniroute_lc.middleware" in result["imported"]
    assert result["usage_source"] == ["provider", "provider"]  # the fake's usage_metadata was read


@pytest.mark.slow
def test_the_llamaindex_adapter_needs_no_langchain():
    blocked = _blocked(LANGCHAIN, LLAMAINDEX_EXTRAS)
    result = run_without([LANGCHAIN], blocked, ["shared_core", "omniroute_li"], LLAMAINDEX_SCENARIO)
    check_routing(result, ["shared_core", "omniroute_li"])
    assert result["usage_source"] == ["provider", "provider"]  # the fake's raw["usage"] was read
