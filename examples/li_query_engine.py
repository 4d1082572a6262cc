"""A LlamaIndex query engine with OmniRoute as `Settings.llm`: each answer goes to the model the budget affords.

Offline: mock embeddings, and stand-in LLMs priced and rated as RouterBench's GPT-4 and Mistral-7B.
Two sessions ask the same questions; the premium one can afford GPT-4, the economy one cannot.
Run: python examples/li_query_engine.py
"""

from __future__ import annotations

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from omniroute_li import OmniRouteLLM
from shared_core import Budget, Candidate
from shared_core.defaults import default_candidates

DOCS = [
    "OmniRoute picks, for every request, the model that gives the most quality for the money.",
    "A session's budget is never exceeded: the worst-case cost is reserved before each call.",
    "After the call, the exact cost is committed from the tokens the provider reported.",
    "The price of money, lambda, rises when a session spends faster than its budget allows.",
]
QUESTIONS = ["How does OmniRoute keep a session within budget?", "When does lambda rise?"]


def stand_in(name: str, answer_words: int) -> Candidate:
    """RouterBench's candidate `name` (real prices, prior accuracy), answered by an offline MockLLM."""
    base = next(c for c in default_candidates() if c.name == name)
    return base.model_copy(update={"model": MockLLM(max_tokens=answer_words), "supports_tools": False})


def main() -> None:
    Settings.embed_model = MockEmbedding(embed_dim=16)
    Settings.llm = OmniRouteLLM([stand_in("gpt-4-1106-preview", 40), stand_in("mistralai/mistral-7b-chat", 40)])
    router = Settings.llm.router
    # λ = 1 / (usd per request): GPT-4's extra 0.30 of predicted accuracy is worth its extra cost
    # at $1 per request, not at a tenth of a cent.
    router.set_budget("premium", Budget(usd=10.0, horizon=10))
    router.set_budget("economy", Budget(usd=0.01, horizon=10))
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS])

    print(f"{'session':<9} {'question':<50} {'model':<27} {'cost USD':>10} {'left USD':>10}")
    for session in ("premium", "economy"):
        engine = index.as_query_engine(llm=Settings.llm.for_session(session))
        for question in QUESTIONS:
            before = router.budget_state(session)
            engine.query(question)
            after = router.budget_state(session)
            (model,) = [m for m in after.by_model if after.by_model[m] != before.by_model.get(m)]
            cost = after.committed - before.committed
            print(f"{session:<9} {question:<50} {model:<27} {cost:>10.6f} {after.remaining:>10.6f}")


if __name__ == "__main__":
    main()
