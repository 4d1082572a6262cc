"""Saving and loading routers: identical predictions after a round trip, clear errors for damaged files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from shared_core.budget import Budget, MemoryStore
from shared_core.embed import FunctionEmbedder, TfidfSvdEmbedder
from shared_core.fitting import PREDICTORS, fit_router
from shared_core.pacing import DualPacer
from shared_core.persist import VERSION, PersistError
from shared_core.router import Router
from shared_core.selection import PredictorSpec


@pytest.fixture(scope="session")
def small(train_sample):
    """400 training prompts: enough to fit every predictor in a second."""
    return train_sample(400, seed=0)


@pytest.fixture(scope="session")
def prompts(test_split):
    return test_split.prompts[:60]


@pytest.fixture(scope="session")
def embedder(small):
    return TfidfSvdEmbedder(dim=32).fit(small.prompts)


@pytest.fixture(scope="session")
def saved(small, embedder, tmp_path_factory):
    """A saved k-NN router and the estimates it gave before saving."""
    router = fit_router(small, "knn", embedder=embedder, cost_weight=2.5, max_fallbacks=1,
                        default_budget=Budget(usd=3.0, horizon=100), pacer=DualPacer(step=0.1))
    directory = tmp_path_factory.mktemp("router")
    router.save(directory)
    return directory, router


def assert_same_estimates(a: Router, b: Router, prompts: list[str]) -> None:
    ea, eb = a.estimate(prompts), b.estimate(prompts)
    assert ea.candidates == eb.candidates
    for field in ("quality", "input_tokens", "output_tokens", "cost"):
        np.testing.assert_array_equal(getattr(ea, field), getattr(eb, field))


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_a_saved_router_predicts_exactly_as_before(name, small, embedder, prompts, tmp_path):
    router = fit_router(small, name, embedder=embedder)
    router.save(tmp_path)
    assert_same_estimates(router, Router.load(tmp_path), prompts)


def test_the_default_embedder_is_saved_too(small, prompts, tmp_path):
    router = fit_router(small, "cluster")
    router.save(tmp_path)
    loaded = Router.load(tmp_path)
    np.testing.assert_array_equal(loaded.embedder.transform(prompts), router.embedder.transform(prompts))


def test_settings_and_candidates_survive_the_round_trip(saved):
    directory, router = saved
    loaded = Router.load(directory)
    assert loaded.candidates == router.candidates
    assert (loaded.cost_weight, loaded.max_fallbacks, loaded.default_budget) == (2.5, 1, Budget(usd=3.0, horizon=100))
    assert loaded.pacer.step == 0.1


def test_added_models_and_feedback_are_saved(small, embedder, prompts, tmp_path):
    router = fit_router(small, "hybrid", embedder=embedder)
    router.remove_candidate("claude-v2")
    j = small.models.index("claude-v2")
    candidate = next(c for c in small.candidates() if c.name == "claude-v2")
    router.add_candidate(candidate, small.prompts[:100], small.quality[:100, j],
                         profile_output_tokens=small.output_tokens()[:100, j])
    router.feedback(router.decide(prompts[0], model="claude-v2"), 0.0)
    router.save(tmp_path)
    loaded = Router.load(tmp_path)
    assert len(loaded.quality.knn_.memory_.X) == len(router.quality.knn_.memory_.X)
    assert_same_estimates(router, loaded, prompts)


def test_the_files_are_json_and_plain_arrays(saved):
    directory, _ = saved
    manifest = json.loads((directory / "router.json").read_text())
    assert manifest["format"] == "omniroute-router" and manifest["version"] == VERSION
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == sorted(manifest["arrays"])
        assert all(arrays[k].dtype.kind in "fiub" for k in arrays.files)


def test_framework_models_are_reattached_by_name(saved):
    directory, _ = saved
    chat_model = object()
    loaded = Router.load(directory, models={"claude-v2": chat_model}, store=MemoryStore())
    assert loaded.candidate("claude-v2").model is chat_model
    assert loaded.candidate("claude-v1").model is None
    with pytest.raises(ValueError, match="unknown candidates"):
        Router.load(directory, models={"gpt-5": chat_model})


def test_an_external_embedder_must_be_given_again(small, prompts, tmp_path):
    def embed(texts):
        return [[len(t), t.count(" ") + 1.0, t.count("\n") + 1.0] for t in texts]

    router = fit_router(small, "knn", embedder=FunctionEmbedder(embed, name="counts"))
    router.save(tmp_path)
    with pytest.raises(PersistError, match="pass embedder="):
        Router.load(tmp_path)
    assert_same_estimates(router, Router.load(tmp_path, embedder=FunctionEmbedder(embed)), prompts)


def rewrite_manifest(directory: Path, change) -> None:
    """Edit the manifest and re-sign it, as a forger who knows the format would."""
    manifest = json.loads((directory / "router.json").read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    change(body)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    signed = {**body, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}
    (directory / "router.json").write_text(json.dumps(signed))


@pytest.fixture
def copy_of_saved(saved, tmp_path):
    directory, _ = saved
    for name in ("router.json", "arrays.npz"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    return tmp_path


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: flip_byte(d / "arrays.npz", 1000), "does not match"),
        (lambda d: (d / "arrays.npz").write_bytes((d / "arrays.npz").read_bytes()[:5000]), "does not match"),
        (lambda d: (d / "arrays.npz").unlink(), "arrays are missing"),
        (lambda d: (d / "router.json").write_text((d / "router.json").read_text()[:300]), "not valid JSON"),
        (lambda d: (d / "router.json").write_text(
            (d / "router.json").read_text().replace('"claude-v1"', '"claude-v9"', 1)), "modified after it was saved"),
        (lambda d: (d / "router.json").unlink(), "not a saved router"),
        (lambda d: rewrite_manifest(d, lambda b: b.update(version=VERSION + 1)), "format version"),
        (lambda d: rewrite_manifest(d, lambda b: b.update(format="something-else")), "not an omniroute router"),
        (lambda d: rewrite_manifest(d, lambda b: b["components"]["quality"].update(kind="os.system")),
         "unknown quality kind"),
        (lambda d: rewrite_manifest(d, lambda b: b["arrays"]["quality/X"].update(shape=[1, 1])), "the manifest says"),
        (lambda d: rewrite_manifest(d, lambda b: b["components"]["quality"]["params"].update(k=-3)),
         "saved quality .* is invalid"),
        (lambda d: rewrite_manifest(d, lambda b: b["candidates"][0].update(input_price=-1)), "invalid candidates"),
    ],
    ids=["flipped-array-byte", "truncated-arrays", "missing-arrays", "truncated-manifest", "edited-manifest",
         "missing-manifest", "future-version", "foreign-format", "unknown-kind", "wrong-shape", "bad-parameter",
         "bad-candidate"],
)
def test_damaged_or_forged_files_raise_a_clear_error(copy_of_saved, damage, message):
    damage(copy_of_saved)
    with pytest.raises(PersistError, match=message):
        Router.load(copy_of_saved)


def test_a_manifest_naming_the_old_logistic_kind_still_loads(small, embedder, prompts, tmp_path):
    router = fit_router(small, "parametric", embedder=embedder)
    router.save(tmp_path)
    rewrite_manifest(tmp_path, lambda b: b["components"]["quality"].update(kind="logistic"))
    assert_same_estimates(router, Router.load(tmp_path), prompts)


def test_a_hybrid_saved_before_it_wrote_its_own_parameters_takes_its_halves(small, embedder, prompts, tmp_path):
    router = fit_router(small, PredictorSpec.of("hybrid", gamma=0.3, k=50, C=1.0, shrinkage=2.0), embedder=embedder)
    router.save(tmp_path)
    rewrite_manifest(tmp_path, lambda b: [b["components"]["quality"]["params"].pop(p) for p in ("k", "C", "shrinkage")])
    loaded = Router.load(tmp_path)
    assert loaded.quality.get_params() == router.quality.get_params()
    assert_same_estimates(router, loaded, prompts)


def forge_array(directory: Path, name: str, change) -> None:
    """Replace the saved array `name` by change(array) and re-sign the manifest to match, as a
    forger who knows the format would: only the loader's own checks can catch it."""
    with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[name] = np.ascontiguousarray(change(arrays[name]))
    np.savez(directory / "arrays.npz", **arrays)
    blob = (directory / "arrays.npz").read_bytes()

    def resign(body):
        body["arrays"][name]["shape"] = list(arrays[name].shape)
        body["arrays_sha256"] = hashlib.sha256(blob).hexdigest()

    rewrite_manifest(directory, resign)


def test_a_forged_array_file_with_matching_checksums_is_still_checked(copy_of_saved):
    """Arrays swapped for others of the right names: shapes must still agree with the parameters."""
    forge_array(copy_of_saved, "quality/Y", lambda Y: Y[:, :3])
    with pytest.raises(PersistError, match="saved quality"):
        Router.load(copy_of_saved)


def test_a_forged_memory_of_another_width_than_the_embedder_is_refused_at_load(copy_of_saved):
    """Each part loads, but they disagree: the error comes at load, not on every request after."""
    forge_array(copy_of_saved, "quality/X", lambda X: X[:, :5])
    with pytest.raises(PersistError, match="embedder and predictors disagree"):
        Router.load(copy_of_saved)


def _save_repeatedly(directory: str, weight: float, times: int) -> None:
    """A worker process: save a router with its own cost weight over and over."""
    from shared_core.candidates import Candidate

    router = Router([Candidate(name=f"m{i}", input_price=1, output_price=1, prior_quality=0.5) for i in range(3)],
                    cost_weight=weight)
    for _ in range(times):
        router.save(directory)


def test_concurrent_saves_of_one_directory_leave_one_whole_router(tmp_path):
    """Processes saving different routers into one directory while another loads: never a mix."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    weights = [1.0, 2.0, 3.0, 4.0]
    workers = [ctx.Process(target=_save_repeatedly, args=(str(tmp_path), w, 15)) for w in weights]
    for w in workers:
        w.start()
    loaded = []
    while any(w.is_alive() for w in workers):
        if (tmp_path / "router.json").exists():
            loaded.append(Router.load(tmp_path).cost_weight)  # a mixed pair would fail its checksum
    for w in workers:
        w.join()
        assert w.exitcode == 0
    assert set(loaded) <= set(weights)
    assert Router.load(tmp_path).cost_weight in weights
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_loaded_router_reads_its_new_clients_caps_and_capabilities_afresh(small, embedder, tmp_path):
    """Found by a new user: a loaded router had every default marked as stated, so it sent 1,024 output
    tokens as the cap to a ChatOpenAI(max_tokens=100), and OmniRouteLLM refused a plain OpenAILike
    client for a candidate "stated" to call tools."""
    from langchain_openai import ChatOpenAI
    from llama_index.llms.openai_like import OpenAILike

    from omniroute_lc import ChatOmniRoute
    from omniroute_li import OmniRouteLLM

    stated = next(c for c in small.candidates() if c.name == "claude-v2").model_copy(update={"max_output_tokens": 300})
    router = fit_router(small, "knn", embedder=embedder, candidates=[
        stated, *(c for c in small.candidates() if c.name != "claude-v2")])
    router.save(tmp_path)
    manifest = json.loads((tmp_path / "router.json").read_text())
    assert {tuple(sorted(c)) for c in manifest["candidates"] if c["name"] != "claude-v2"} == {
        ("input_price", "name", "output_price")}  # only what was stated
    clients = {c.name: ChatOpenAI(model="m", api_key="k", base_url="http://127.0.0.1:9/v1", max_tokens=100)
               for c in router.candidates}
    chat = ChatOmniRoute(router=Router.load(tmp_path, models=clients))
    caps = {c.name: c.max_output_tokens for c in chat.router.candidates}
    assert caps.pop("claude-v2") == 300  # stated: it wins over the client's cap
    assert set(caps.values()) == {100}
    plain = {c.name: OpenAILike(model="m", api_base="http://127.0.0.1:9/v1", api_key="k", is_chat_model=True,
                                max_tokens=50) for c in router.candidates}
    llm = OmniRouteLLM(router=Router.load(tmp_path, models=plain))
    assert not any(c.supports_tools for c in llm.router.candidates)
    # Saved again from there, the others still state only what their user stated (a stated cap
    # is saved as lowered to a client's own limit, which only ever lowers it).
    llm.router.save(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "router.json").read_text())
    assert again["candidates"][1:] == manifest["candidates"][1:]


def test_without_its_clients_a_loaded_router_keeps_what_they_said(small, embedder, tmp_path):
    """What clients declared is saved apart (`read_from_clients`): a router loaded without them (the
    CLI, an offline replay) keeps their caps, windows and providers, still not stated."""
    from langchain_openai import ChatOpenAI

    from omniroute_lc import ChatOmniRoute

    router = fit_router(small, "knn", embedder=embedder)
    chat = ChatOmniRoute(router=Router.load(router.save(tmp_path / "a").parent, models={
        c.name: ChatOpenAI(model="m", api_key="k", base_url="http://127.0.0.1:9/v1", max_tokens=100)
        for c in router.candidates}))
    chat.router.save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "router.json").read_text())
    assert all(read == {"max_output_tokens": 100, "provider": "openai"}
               for read in manifest["read_from_clients"].values())
    alone = Router.load(tmp_path / "b")
    assert {(c.max_output_tokens, c.provider) for c in alone.candidates} == {(100, "openai")}
    # Given clients but used without an adapter (the core never reads a client), the same.
    given = Router.load(tmp_path / "b", models={c.name: object() for c in alone.candidates})
    assert {(c.max_output_tokens, c.provider) for c in given.candidates} == {(100, "openai")}
    assert given.decide("What is 2 + 2?").output_cap == 100
    assert all("max_output_tokens" not in c.model_fields_set for c in alone.candidates)
    alone.save(tmp_path / "c")
    assert json.loads((tmp_path / "c" / "router.json").read_text())["candidates"] == manifest["candidates"]
    assert json.loads((tmp_path / "c" / "router.json").read_text())["read_from_clients"] == manifest[
        "read_from_clients"]
    # Bound to other clients after that, a candidate reads them, not what the first ones said.
    from langchain_anthropic import ChatAnthropic

    rebound = ChatOmniRoute(router=alone, candidates=[
        c.model_copy(update={"model": ChatAnthropic(model="claude-x", api_key="k", base_url="http://127.0.0.1:9")})
        for c in alone.candidates])
    assert {(c.max_output_tokens, c.provider) for c in rebound.router.candidates} != {(100, "openai")}
    assert {c.provider for c in rebound.router.candidates} == {"anthropic"}


def test_a_forged_read_from_clients_is_refused_as_a_damaged_manifest(saved, tmp_path):
    import shutil

    directory, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    for forged in ({"claude-v2": {"max_output_tokens": -5}}, {"claude-v2": {"no_such_field": 1}}, ["x"],
                   {"claude-v2": {"input_price": 0.0}}, {"claude-v2": {"name": "other"}}, {"gpt-9": {}}):
        rewrite_manifest(copy, lambda m, forged=forged: m.update(read_from_clients=forged))
        with pytest.raises(PersistError, match="invalid candidates or settings"):
            Router.load(copy)


def test_derived_values_are_validated_and_keep_a_subclass():
    from shared_core.candidates import Candidate

    class Team(Candidate):
        team: str = "search"

        def cost(self, input_tokens: float, output_tokens: float) -> float:
            return 0.5 * super().cost(input_tokens, output_tokens)

    c = Team(name="a", input_price=1, output_price=1, team="ads")
    d = c.with_limits(client_cap=100, provider="openai")
    assert type(d) is Team and d.team == "ads" and d.cost(1e6, 0) == 0.5
    assert d.max_output_tokens == 100 and d.model_fields_set == c.model_fields_set
    assert d.read_from_client() == {"max_output_tokens": 100, "provider": "openai"}
    with pytest.raises(ValueError):
        c.derived(max_output_tokens=0)
    with pytest.raises(ValueError):
        c.derived(max_output_token=100)  # no such field


def test_a_candidate_from_its_model_states_its_prices_not_its_clients_capabilities(tmp_path):
    pytest.importorskip("genai_prices", reason="Candidate.from_model reads the genai-prices catalogue (extra prices)")
    from llama_index.llms.openai import OpenAI
    from llama_index.llms.openai_like import OpenAILike

    from omniroute_li import OmniRouteLLM
    from shared_core.candidates import Candidate

    candidate = Candidate.from_model(OpenAI(model="gpt-4o-mini", api_key="k", max_tokens=100), prior_quality=0.5)
    assert {"input_price", "output_price", "prior_quality"} <= candidate.model_fields_set
    assert not {"supports_tools", "max_output_tokens"} & candidate.model_fields_set
    Router([candidate]).save(tmp_path)
    plain = OpenAILike(model="gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="k", is_chat_model=True)
    llm = OmniRouteLLM(router=Router.load(tmp_path, models={candidate.name: plain}))  # refused before: "stated" tools
    assert not llm.router.candidate(candidate.name).supports_tools


def test_a_candidate_from_its_model_keeps_the_catalogues_window(tmp_path):
    pytest.importorskip("genai_prices", reason="Candidate.from_model reads the genai-prices catalogue (extra prices)")
    from langchain_anthropic import ChatAnthropic

    from omniroute_lc import ChatOmniRoute
    from shared_core.candidates import Candidate

    client = ChatAnthropic(model="claude-sonnet-4-20250514", api_key="k", base_url="http://127.0.0.1:9")
    candidate = Candidate.from_model(client, prior_quality=0.5)
    assert "context_window" in candidate.model_fields_set  # the catalogue's: stated, as its prices are
    Router([candidate]).save(tmp_path)
    chat = ChatOmniRoute(router=Router.load(tmp_path, models={candidate.name: client}))
    assert chat.router.candidate(candidate.name).context_window == candidate.context_window
