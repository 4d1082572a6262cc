"""OmniRouteSelector inside RouterQueryEngine / RouterRetriever: budget-aware choices, an exact ledger."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.retrievers import RouterRetriever
from llama_index.core.tools import QueryEngineTool, RetrieverTool, ToolMetadata

from omniroute_li import OmniRouteSelector, RoutedSelection
from shared_core import Budget, BudgetExceeded, Router
from li_fakes import CHEAP, EXPENSIVE, UsageLLM, candidate

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
    selector = OmniRouteSelector(router, {"deep": EXPENSIVE, "quick": CHEAP}, session="tight")
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
