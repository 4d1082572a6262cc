"""Cold start (issue 17): importing OmniRoute and loading a saved router pay only for what they use.

Import checks run in fresh interpreters (a module imported once stays imported); the saved-router
format checks run here.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import shared_core
from shared_core import Candidate, Router
from shared_core.data import RoutingDataset
from shared_core.fitting import fit_router
from shared_core.quality import PREDICTORS, KNNQuality
from shared_core.selection import PredictorSpec

ROOT = Path(__file__).resolve().parents[1]
MATH = [f"Compute {a} plus {a + 7} and then multiply the sum by {a % 5 + 2}." for a in range(30)]
TRIVIA = [f"Which river flows through city number {a} of the old atlas, and who named it?" for a in range(30)]
QUESTIONS = ["Compute 12 plus 19 and then multiply the sum by 3.",
             "Which river flows through city number 7 of the old atlas, and who named it?"]


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Router, Path]:
    """A k-NN router with its TF-IDF embedder and length predictor, fitted on two topics, and where it is saved."""
    prompts = MATH + TRIVIA
    n = len(prompts)
    dataset = RoutingDataset(
        prompts=prompts, models=["small", "big"],
        quality=np.array([[0.0, 1.0]] * len(MATH) + [[1.0, 0.0]] * len(TRIVIA)),
        cost=None, responses=[["four", "the answer is thirty-one times three"]] * n,
        task=np.array(["math"] * len(MATH) + ["trivia"] * len(TRIVIA), dtype=object),
        split=np.array(["train"] * n, dtype=object), sample_ids=np.array([str(i) for i in range(n)], dtype=object),
    )
    candidates = [Candidate(name="small", input_price=0.15, output_price=0.60),
                  Candidate(name="big", input_price=2.50, output_price=10.00)]
    router = fit_router(dataset, PredictorSpec.of("knn", k=10), candidates=candidates, warm_start=False)
    directory = tmp_path_factory.mktemp("router")
    router.save(directory)
    return router, directory


# ---------------------------------------------------------------- lazy imports

def test_import_shared_core_imports_nothing_until_a_name_is_used():
    out = fresh(
        "import json, sys, shared_core\n"
        "before = sorted(m for m in sys.modules if m.startswith(('shared_core.', 'numpy', 'pydantic')))\n"
        "budget = shared_core.Budget(usd=2.0)\n"
        "from shared_core import tokens\n"
        "print(json.dumps({'before': before, 'usd': budget.usd, 'tokens': tokens.__name__,\n"
        "                  'router': 'shared_core.router' in sys.modules}))"
    )
    assert out["before"] == []
    assert out["usd"] == 2.0 and out["tokens"] == "shared_core.tokens"
    assert out["router"] is False  # Budget needs the budget module, not the router


def test_every_public_name_resolves_to_its_defining_module():
    for name in shared_core.__all__:
        value = getattr(shared_core, name)
        module = shared_core._EXPORTS[name]
        assert value is getattr(sys.modules["shared_core" + module], name)
    assert set(shared_core.__all__) == set(shared_core._EXPORTS)
    assert set(shared_core.__all__) <= set(dir(shared_core))
    with pytest.raises(AttributeError, match="has no attribute 'Routr'"):
        shared_core.Routr  # noqa: B018


def test_the_predictor_registry_imports_a_predictor_only_when_it_is_looked_up():
    out = fresh(
        "import json, sys\n"
        "from shared_core.quality import PREDICTORS\n"
        "names = list(PREDICTORS)\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('shared_core.quality.') and\n"
        "                        m not in ('shared_core.quality.base',))\n"
        "before = loaded()\n"
        "cls = PREDICTORS['knn']\n"
        "print(json.dumps({'names': names, 'before': before, 'after': loaded(), 'cls': cls.__name__}))"
    )
    assert out["names"] == ["prior", "knn", "parametric", "hybrid", "cluster", "learned-map"]
    assert out["before"] == []
    assert out["after"] == ["shared_core.quality.knn", "shared_core.quality.memory"]
    assert out["cls"] == "KNNQuality"


def test_the_registry_names_each_class_and_nothing_else():
    assert PREDICTORS["knn"] is KNNQuality and PREDICTORS.kind_of(KNNQuality) == "knn"
    assert {PREDICTORS.kind_of(PREDICTORS[name]) for name in PREDICTORS} == set(PREDICTORS)

    class MyKNN(KNNQuality):
        pass

    assert PREDICTORS.kind_of(MyKNN) is None  # a subclass is not what the registry would rebuild
    with pytest.raises(KeyError):
        PREDICTORS["nearest"]


def test_loading_a_router_imports_only_the_parts_it_holds(saved):
    _, directory = saved
    out = fresh(
        "import json, sys\n"
        "from shared_core import Router\n"
        f"router = Router.load({str(directory)!r})\n"
        f"router.decide({QUESTIONS[0]!r})\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    unused = {
        # Other predictors, fitting and evaluation, datasets, the CLI, the call loop.
        "shared_core.quality.cluster", "shared_core.quality.parametric", "shared_core.quality.hybrid",
        "shared_core.quality.learned_map", "shared_core.quality.prior", "shared_core.fitting",
        "shared_core.selection", "shared_core.evaluate", "shared_core.data", "shared_core.cli",
        "shared_core.calls", "shared_core.catalogue", "shared_core.media",
        # Optional extras and the frameworks.
        "genai_prices", "opentelemetry", "matplotlib", "redis", "psycopg", "langchain_core", "llama_index",
    }
    assert sorted(unused & set(out)) == []
    assert {"shared_core.quality.knn", "shared_core.embed", "shared_core.length"} <= set(out)


def test_loading_a_router_and_deciding_imports_neither_scikit_learn_nor_scipy_nor_pandas(saved):
    _, directory = saved
    out = fresh(
        "import json, sys\n"
        "from shared_core import Router\n"
        f"Router.load({str(directory)!r}).decide({QUESTIONS[0]!r})\n"
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))"
    )
    # scikit-learn alone costs about a second; it brings scipy.stats, pandas and pyarrow with it.
    assert sorted({"sklearn", "scipy", "pandas", "pyarrow"} & set(out)) == []


@pytest.mark.parametrize(("package", "embedder"), [("omniroute_lc", "LangChainEmbedder"),
                                                   ("omniroute_li", "LlamaIndexEmbedder")])
@pytest.mark.slow
def test_an_adapter_loads_the_embedding_module_only_for_its_embedder(package, embedder):
    out = fresh(
        "import json, sys\n"
        f"import {package}\n"
        "before = 'shared_core.embed' in sys.modules\n"
        f"cls = {package}.{embedder}\n"
        "print(json.dumps({'before': before, 'after': 'shared_core.embed' in sys.modules, 'cls': cls.__name__}))"
    )
    assert out == {"before": False, "after": True, "cls": embedder}


# ---------------------------------------------------------------- the saved arrays

def members(directory: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(directory / "arrays.npz") as zf:
        return {info.filename[:-4]: info for info in zf.infolist()}


def test_float_arrays_are_stored_and_labels_deflated(saved):
    _, directory = saved
    infos = members(directory)
    # Embeddings and SVD directions barely compress: inflating them would cost every load.
    for key in ("embedder/components", "quality/X"):
        assert infos[key].compress_type == zipfile.ZIP_STORED
    # 0/1 labels shrink many times over and stay deflated.
    assert infos["quality/Y"].compress_type == zipfile.ZIP_DEFLATED
    assert infos["quality/Y"].compress_size * 4 < infos["quality/Y"].file_size
    with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
        assert npz["quality/Y"].shape == (60, 2)


def test_the_same_router_saves_the_same_bytes(saved, tmp_path):
    router, directory = saved
    router.save(tmp_path)
    assert (tmp_path / "arrays.npz").read_bytes() == (directory / "arrays.npz").read_bytes()
    assert (tmp_path / "router.json").read_bytes() == (directory / "router.json").read_bytes()


def test_a_router_saved_with_every_array_deflated_still_loads(saved, tmp_path):
    router, directory = saved
    with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # the format routers were saved in before
    (tmp_path / "arrays.npz").write_bytes(buffer.getvalue())
    manifest = json.loads((directory / "router.json").read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    body["arrays_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    signed = {**body, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}
    (tmp_path / "router.json").write_text(json.dumps(signed))
    assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in members(tmp_path).values())

    loaded = Router.load(tmp_path)
    for question in QUESTIONS:
        want, got = router.decide(question), loaded.decide(question)
        assert got.quality == want.quality and got.output_tokens == want.output_tokens
    assert [loaded.decide(q).chosen for q in QUESTIONS] == ["big", "small"]
