"""An LCEL chain with ChatOmniRoute as its model: each answer goes to the model the session's budget affords.

Offline: FakeToolChatModel stand-ins priced and rated as three of RouterBench's models. Two
sessions ask the same questions through one chain; the session comes from the run config.
The premium session can afford GPT-4; the economy one cannot, so it gets the cheap model. A
second chain returns structured output, and a SpendTracker totals the money per session.
Run: python examples/lc_chain.py
"""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field

from omniroute_lc import ChatOmniRoute, SpendTracker
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget, Candidate
from shared_core.defaults import default_candidates

MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat")
QUESTIONS = [
    "Why does a budget need a reservation before the call?",
    "What is the price of money in a router?",
    "When should a cheap model answer instead of an expensive one?",
]


class Verdict(BaseModel):
    """A one-line verdict on a question."""

    topic: str = Field(description="What the question is about")
    difficulty: int = Field(description="1 (easy) to 5 (hard)")


def stand_in(name: str) -> Candidate:
    """RouterBench's candidate `name` (real prices, prior accuracy), answered by an offline fake."""
    base = next(c for c in default_candidates() if c.name == name)
    return base.model_copy(update={"model": FakeToolChatModel(model_name=name)})


def main() -> None:
    chat = ChatOmniRoute(candidates=[stand_in(m) for m in MODELS], max_tokens=256)
    # λ = horizon / usd: GPT-4's extra predicted accuracy is worth its price at 25 cents a
    # request, not at a twentieth of a cent (where its worst case does not even fit).
    chat.router.set_budget("premium", Budget(usd=1.0, horizon=2 * len(QUESTIONS)))
    chat.router.set_budget("economy", Budget(usd=0.003, horizon=2 * len(QUESTIONS)))
    tracker = SpendTracker()

    answer = ChatPromptTemplate.from_messages([("system", "Answer in one sentence."), ("human", "{question}")]) | chat
    rate = ChatPromptTemplate.from_messages([("human", "Rate the question '{question}' from 1 to 5.")]) | \
        chat.with_structured_output(Verdict, include_raw=True)

    print(f"{'session':<8} {'question':<62} {'model':<26} {'cost USD':>10} {'left USD':>9}")
    for session in ("premium", "economy"):
        config = {"configurable": {"session_id": session}, "callbacks": [tracker]}
        for question in QUESTIONS:
            info = answer.invoke({"question": question}, config=config).response_metadata["omniroute"]
            print(f"{session:<8} {question:<62} {info['model']:<26} {info['actual_cost_usd']:>10.6f} "
                  f"{info['remaining_usd']:>9.5f}")
        rated = rate.invoke({"question": QUESTIONS[0]}, config=config)
        model = rated["raw"].response_metadata["omniroute"]["model"]
        print(f"{session:<8} structured output from {model}: {rated['parsed']!r}")

    print("\nspend per session:", {s: round(usd, 6) for s, usd in tracker.by_session().items()})
    print("spend per model:  ", {m: round(usd, 6) for m, usd in tracker.by_model().items()})


if __name__ == "__main__":
    main()
