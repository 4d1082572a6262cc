"""A LangGraph team whose agents each spend from their own budget, inside one team budget.

researcher (a tool loop) → writer → reviewer, on three topics, each topic its own thread. Every
agent is the same ChatOmniRoute pinned to its own session with `for_session("acme/<agent>")`,
so each charges its own budget and the team budget "acme" at once (a pinned session beats the
graph's thread_id). The writer's budget affords GPT-4 once, then GPT-3.5; the reviewer's
affords two reviews by the cheapest model, and the graph carries on without the third.
Offline: FakeToolChatModel stand-ins priced and rated as RouterBench's models.
Run: python examples/lc_agents_budgets.py
"""

from __future__ import annotations

from typing import Annotated

from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from typing_extensions import TypedDict

from omniroute_lc import ChatOmniRoute
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget, BudgetExceeded, Candidate
from shared_core.data import ROUTERBENCH_PRICES
from shared_core.defaults import default_candidates

MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat")
AGENTS = ("researcher", "writer", "reviewer")
TOPICS = ["gpt-4-1106-preview", "claude-v2", "mistralai/mixtral-8x7b-chat"]


@tool
def output_price(model: str) -> str:
    """The price of a model's output tokens, in US dollars per million."""
    return f"{model} costs ${ROUTERBENCH_PRICES[model][1]:.2f} per million output tokens"


class Team(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    review: str


def stand_in(name: str) -> Candidate:
    """RouterBench's candidate `name` (real prices, prior accuracy), answered by an offline fake."""
    base = next(c for c in default_candidates() if c.name == name)
    return base.model_copy(update={"model": FakeToolChatModel(model_name=name)})


def build_team(chat: ChatOmniRoute):
    """The graph: each node calls its own agent's pinned copy of `chat`."""
    researcher = chat.for_session("acme/researcher").bind_tools([output_price])
    writer = chat.for_session("acme/writer")
    reviewer = chat.for_session("acme/reviewer")

    def research(state: Team) -> dict:
        return {"messages": [researcher.invoke(state["messages"])]}

    def write(state: Team) -> dict:
        finding = state["messages"][-1].text
        return {"messages": [writer.invoke([SystemMessage("Write a two-line brief."), HumanMessage(finding)])]}

    def review(state: Team) -> dict:
        try:
            return {"review": reviewer.invoke([HumanMessage(f"Review: {state['messages'][-1].text}")]).text}
        except BudgetExceeded as refused:
            return {"review": f"skipped ({refused})"}

    graph = StateGraph(Team)
    graph.add_node("research", research)
    graph.add_node("tools", ToolNode([output_price]))
    graph.add_node("write", write)
    graph.add_node("review", review)
    graph.add_edge(START, "research")
    graph.add_conditional_edges("research", tools_condition, {"tools": "tools", END: "write"})
    graph.add_edge("tools", "research")
    graph.add_edge("write", "review")
    graph.add_edge("review", END)
    return graph.compile(checkpointer=InMemorySaver())


def main() -> None:
    # Short answers (32 tokens at most) make each call cost close to the worst case reserved for it.
    chat = ChatOmniRoute(candidates=[stand_in(m) for m in MODELS], max_tokens=32)
    budgets = {"acme": 0.02, "acme/researcher": 0.015, "acme/writer": 0.0018, "acme/reviewer": 0.00003}
    for scope, usd in budgets.items():
        chat.router.set_budget(scope, Budget(usd=usd))
    team = build_team(chat)

    for i, topic in enumerate(TOPICS):
        state = team.invoke({"messages": [HumanMessage(f"How much does '{topic}' charge for output?")]},
                            {"configurable": {"thread_id": f"topic-{i}"}})
        print(f"topic {topic}:\n  brief:  {state['messages'][-1].text[:100]}\n  review: {state['review'][:100]}")

    print(f"\n{'scope':<16} {'budget':>9} {'spent':>9} {'left':>9} {'calls':>5}  models")
    for scope in budgets:
        s = chat.router.budget_state(scope)
        models = ", ".join(f"{m.split('/')[-1]} ${usd:.5f}" for m, usd in sorted(s.by_model.items()))
        print(f"{scope:<16} {s.budget.usd:>9.6f} {s.committed:>9.6f} {s.remaining:>9.6f} {s.requests:>5}  {models}")


if __name__ == "__main__":
    main()
