"""A RouterQueryEngine whose selector is OmniRoute: a cheap and an expensive engine, chosen under budget.

Offline: mock embeddings, and stand-in LLMs priced and rated as RouterBench's GPT-4 and Mistral-7B.
The "thorough" engine answers with GPT-4, the "brief" one with Mistral-7B. The selector picks the
engine whose model the router would pick for the query in that session; the engine's own LLM
call is what gets charged, exactly. Run: python examples/li_router_query_engine.py
"""

from __future__ import annotations

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool

from omniroute_li import OmniRouteSelector
from shared_core import Budget, Candidate, Router
from shared_core.defaults import default_candidates

DOCS = [
    "The Treaty of Westphalia (1648) ended the Thirty Years' War.",
    "It established the principle of state sovereignty in Europe.",
    "The negotiations took place in Osnabrück and Münster.",
]
ENGINES = {"thorough": "gpt-4-1106-preview", "brief": "mistralai/mistral-7b-chat"}


def stand_in(name: str) -> Candidate:
    """RouterBench's candidate `name` (real prices, prior accuracy), answered by an offline MockLLM."""
    base = next(c for c in default_candidates() if c.name == name)
    return base.model_copy(update={"model": MockLLM(max_tokens=30), "supports_tools": False})


def main() -> None:
    router = Router([stand_in(model) for model in ENGINES.values()])
    # λ = 1 / (usd per query) at the start, then paced by what each session actually spends.
    router.set_budget("research", Budget(usd=5.0, horizon=5))
    router.set_budget("faq", Budget(usd=0.005, horizon=5))
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=MockEmbedding(embed_dim=16))

    for session in ("research", "faq"):
        selector = OmniRouteSelector(router, ENGINES, session=session)
        tools = [
            QueryEngineTool.from_defaults(
                index.as_query_engine(llm=selector.llm_for(name)), name=name, description=f"{name} answers"
            )
            for name in ENGINES
        ]
        # llm= only summarises multi-selections; the selector itself never asks an LLM.
        engine = RouterQueryEngine(selector=selector, query_engine_tools=tools, llm=MockLLM())
        for question in ("When did the Thirty Years' War end?", "Where were the negotiations held?"):
            selection = engine.query(question).metadata["selector_result"]
            print(f"[{session}] {question}\n  -> {selection.reason}")
        state = router.budget_state(session)
        spend = ", ".join(f"{m}: ${usd:.6f}" for m, usd in state.by_model.items())
        print(f"[{session}] spent ${state.committed:.6f} of ${state.budget.usd} ({spend}); "
              f"reserved ${state.reserved}\n")


if __name__ == "__main__":
    main()
