"""OmniRouteSelector inside RouterQueryEngine / RouterRetriever: budget-aware choices, an exact ledger."""

from __future__ import annotations

import pytest
from li_fakes import CHEAP, EXPENSIVE, UsageLLM, candidate
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.tools import QueryEngineTool, RetrieverTool, ToolMetadata

from omniroute_li import OmniRouteSelector, RoutedSelection
from shared_core import Budget, BudgetExceeded, Router

DOCS = [
    "Photosynthesis turns carbon dioxide and water into glucose and oxygen using light.",
    "The Krebs cycle releases stored energy through the oxidation of acetyl-CoA.",
    "Chlorophyll absorbs mostly blue and red light and reflects green.",
]
QUERY = "What do plants take in for photosynthesis?"


@pytest.fixture()
def setup():
    """A router over RouterBench's GPT-4 and Mistral-7B (real prices and priors) and two engines."""
    deep, quick = UsageLLM(label="deep", reply="Carbon dioxide and water"), UsageLLM(label="quick", reply="CO2")
    router = Router([candidate(EXPENSIVE, deep), candidate(CHEAP, quick)])
    # λ = θ / (usd / horizon) with θ = 1 at the start. GPT-4 predicts 0.299 more quality than
    # Mistral-7B for about $0.0078 more per call (256 assumed output tokens at $30 vs $0.2 per 1M):
    # at λ = 1 ($10 over 10 queries) quality wins; at λ = 200 ($0.5 over 100) money does.
    router.set_budget("generous", Budget(usd=10.0, horizon=10))
    router.set_budget("tight", Budget(usd=0.5, horizon=100))
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=8))

    def engine(session: str) -> RouterQueryEngine:
        selector = OmniRouteSelector(router, {"deep": EXPENSIVE, "quick": CHEAP}, session=session)
        tools = [
            QueryEngineTool.from_defaults(index.as_query_engine(llm=selector.llm_for(n)), name=n, description=n)
            for n in ("deep", "quick")
        ]
        return RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())

    return router, deep, quick, engine


def _spent(router: Router, fake: UsageLLM, name: str) -> float:
    return sum(router.candidate(name).cost(p, c) for p, c in fake.usage_log)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_the_session_budget_decides_which_engine_answers(setup, asynchronous):
    router, deep, quick, engine = setup
    for session, fake, name, answer in (("generous", deep, EXPENSIVE, "Carbon dioxide and water"),
                                        ("tight", quick, CHEAP, "CO2")):
        qe = engine(session)
        response = await qe.aquery(QUERY) if asynchronous else qe.query(QUERY)
        assert str(response) == answer
        selection = response.metadata["selector_result"]
        assert isinstance(selection, RoutedSelection) and selection.decision.chosen == name
        assert f"candidate {name!r}" in selection.reason and "λ=" in selection.reason
        # Selection reserves nothing for long: the engine's own call is the only charge, exact.
        state = router.budget_state(session)
        assert state.by_model == {name: pytest.approx(_spent(router, fake, name))}
        assert state.requests == fake.calls == 1 and state.reserved == 0
    assert router.store.open_reservations() == 0


def test_a_refused_selection_calls_no_engine(setup):
    router, deep, quick, engine = setup
    router.set_budget("broke", Budget(usd=1e-6))
    with pytest.raises(BudgetExceeded):
        engine("broke").query(QUERY)
    assert deep.calls == quick.calls == 0 and router.store.open_reservations() == 0


def test_the_reason_names_candidates_that_scored_higher_but_did_not_fit(setup):
    router, deep, quick, engine = setup
    # GPT-4 scores higher at λ = 0 but its worst case (4096 output tokens at $30/1M ≈ $0.12) does not fit.
    router.set_budget("capped", Budget(usd=0.01))
    response = engine("capped").query(QUERY)
    selection = response.metadata["selector_result"]
    assert selection.decision.chosen == CHEAP
    assert f"{EXPENSIVE} scored higher but did not fit the remaining budget" in selection.reason


def test_router_retriever_uses_the_selector(setup):
    router, deep, quick, engine = setup
    indexes = {
        name: VectorStoreIndex.from_documents([Document(text=f"{name} notes")], embed_model=MockEmbedding(embed_dim=8))
        for name in ("deep", "quick")
    }
    # Retrievers make no LLM call to take a selection's hold over: release it at once.
    selector = OmniRouteSelector(router, {"deep": EXPENSIVE, "quick": CHEAP}, session="tight", hold=False)
    tools = [RetrieverTool.from_defaults(indexes[n].as_retriever(), name=n, description=n) for n in ("deep", "quick")]
    nodes = RouterRetriever(selector=selector, retriever_tools=tools, llm=MockLLM()).retrieve(QUERY)
    assert [n.node.get_content() for n in nodes] == ["quick notes"]
    assert router.store.open_reservations() == 0


def test_bad_choices_are_named():
    router = Router([candidate(CHEAP, MockLLM(), supports_tools=False)])
    with pytest.raises(KeyError, match="unknown candidate"):
        OmniRouteSelector(router, {"quick": "gpt-5"})
    with pytest.raises(ValueError, match="its own candidate"):
        OmniRouteSelector(router, {"a": CHEAP, "b": CHEAP})
    selector = OmniRouteSelector(router, {"quick": CHEAP})
    with pytest.raises(ValueError, match="'other' has no candidate"):
        selector.select([ToolMetadata(name="quick", description="q"), ToolMetadata(name="other", description="o")],
                        QUERY)
    with pytest.raises(ValueError, match="None has no candidate: give its tool a name"):
        selector.select(["a bare description"], QUERY)


class WordEmbedding(BaseEmbedding):
    """A tiny deterministic bag-of-words embedding: one dimension per word of a fixed vocabulary."""

    vocabulary: list[str] = ["plants", "photosynthesis", "light", "poems", "rhyme", "verse"]

    @classmethod
    def class_name(cls) -> str:
        return "WordEmbedding"

    def _vector(self, text: str) -> list[float]:
        words = text.lower().replace("?", " ").replace(".", " ").split()
        return [float(sum(w.startswith(v[:5]) for w in words)) for v in self.vocabulary]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


class PickSecond(BaseSelector):
    """A selector that always picks the second choice (stands in for an LLM selector)."""

    def _get_prompts(self):
        return {}

    def _update_prompts(self, prompts):
        pass

    def _select(self, choices, query):
        return SelectorResult(selections=[SingleSelection(index=1, reason="second")])

    async def _aselect(self, choices, query):
        return self._select(choices, query)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_relevance_of_the_descriptions_weighs_with_cost(setup, asynchronous):
    router, deep, quick, _ = setup
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=8))
    # GPT-4 answers behind a poetry engine, Mistral behind a botany engine: with a generous budget
    # GPT-4's predicted quality wins unless relevance says its engine is not for this query.
    choices = {"poetry": EXPENSIVE, "botany": CHEAP}
    descriptions = {
        "poetry": "Writes poems that rhyme, in verse.",
        "botany": "Answers questions on plants, light and photosynthesis.",
    }

    def engine(relevance):
        selector = OmniRouteSelector(router, choices, session="generous", relevance=relevance)
        tools = [QueryEngineTool.from_defaults(index.as_query_engine(llm=selector.llm_for(n)), name=n,
                                               description=descriptions[n]) for n in choices]
        return RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())

    for relevance, expected in ((None, EXPENSIVE), (WordEmbedding(), CHEAP), (PickSecond(), CHEAP)):
        qe = engine(relevance)
        response = await qe.aquery(QUERY) if asynchronous else qe.query(QUERY)
        selection = response.metadata["selector_result"]
        assert selection.decision.chosen == expected
        if relevance is not None:
            assert "relevance 1.00" in selection.selections[0].reason
    assert router.store.open_reservations() == 0


def test_the_selection_reserves_the_engines_call_and_hands_it_over(setup):
    router, deep, quick, engine = setup
    response = engine("generous").query(QUERY)
    decision = response.metadata["selector_result"].decision
    query_tokens = router.decide(QUERY, max_tokens=1).input_tokens[decision.chosen]
    assert decision.input_tokens[decision.chosen] == query_tokens + 2_000  # the engine's context, reserved
    # The engine's call took the hold over and settled exactly; nothing is left held.
    state = router.budget_state("generous")
    assert router.store.open_reservations() == 0 and state.reserved == 0
    assert state.committed == pytest.approx(_spent(router, deep, EXPENSIVE) + _spent(router, quick, CHEAP))
    assert state.released >= 1  # the selection's hold, given way to the engine's own reservation


def test_a_hold_no_engine_call_takes_over_lapses(setup):
    import time

    from llama_index.core.query_engine import CustomQueryEngine

    class Failing(CustomQueryEngine):
        def custom_query(self, query_str: str):
            raise RuntimeError("vector store down")

    router, *_ = setup
    selector = OmniRouteSelector(router, {"deep": EXPENSIVE, "quick": CHEAP}, session="generous", hold_ttl_s=0.2)
    tools = [QueryEngineTool.from_defaults(Failing(), name=n, description=n) for n in ("deep", "quick")]
    with pytest.raises(RuntimeError, match="vector store down"):
        RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM()).query(QUERY)
    assert router.store.open_reservations() == 1
    time.sleep(0.3)
    assert router.store.open_reservations() == 0


def test_extreme_embeddings_say_nothing_rather_than_crash(setup):
    router, *_ = setup

    class Huge(WordEmbedding):
        def _vector(self, text: str) -> list[float]:
            return [1e300 * (x + 1) for x in super()._vector(text)]

    selector = OmniRouteSelector(router, {"deep": EXPENSIVE, "quick": CHEAP}, session="generous", relevance=Huge(),
                                 hold=False)
    choices = [ToolMetadata(name="deep", description="plants"), ToolMetadata(name="quick", description="poems")]
    from llama_index.core.schema import QueryBundle

    assert selector.select(choices, QueryBundle(QUERY)).selections
