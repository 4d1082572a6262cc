"""A LangChain agent (`create_agent`) whose every model call OmniRoute routes, under each user's budget.

OmniRouteMiddleware hands each model call of the agent's tool loop to ChatOmniRoute, charged to
the user the agent's context names ("acme/<user>", inside the team budget "acme"). Ada's budget
affords GPT-4 at every step; Bob's does not, so his steps go to cheaper models until his budget
is spent and the agent raises BudgetExceeded (its checkpointer keeps the steps before). The
agent streams its tokens with stream_mode="messages". A second agent, without `scope=`, charges
each conversation thread and returns a structured `response_format`.
Offline: FakeToolChatModel stand-ins priced and rated as RouterBench's models.
Run: python examples/lc_agent_middleware.py
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import BaseModel, Field

from omniroute_lc import BudgetExceeded, ChatOmniRoute, OmniRouteMiddleware
from omniroute_lc.fakes import FakeToolChatModel
from shared_core import Budget, Candidate
from shared_core.data import ROUTERBENCH_PRICES
from shared_core.defaults import default_candidates

MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat")
TOPICS = ["claude-v2", "mistralai/mixtral-8x7b-chat", "meta/llama-2-70b-chat", "claude-instant-v1",
          "zero-one-ai/Yi-34B-Chat", "WizardLM/WizardLM-13B-V1.2"]


@dataclass
class User:
    """The agent's run context: who is asking."""

    name: str


class Verdict(BaseModel):
    """Whether a model is worth its price."""

    model: str = Field(description="The model judged")
    verdict: str = Field(description="cheap or dear")


@tool
def output_price(model: str) -> str:
    """The price of a model's output tokens, in US dollars per million."""
    return f"{model} costs ${ROUTERBENCH_PRICES[model][1]:.2f} per million output tokens"


def stand_in(name: str) -> Candidate:
    """RouterBench's candidate `name` (real prices, prior accuracy), answered by an offline fake."""
    base = next(c for c in default_candidates() if c.name == name)
    return base.model_copy(update={"model": FakeToolChatModel(model_name=name)})


def show(who: str, messages: list) -> None:
    """One line per model call of the agent's last turn: the model it was routed to, what it did, its cost."""
    turn = messages[max(i for i, m in enumerate(messages) if m.type == "human"):]
    for message in (m for m in turn if isinstance(m, AIMessage)):
        info = message.response_metadata["omniroute"]
        did = f"calls {message.tool_calls[0]['name']}" if message.tool_calls else "answers"
        print(f"  {who:<6} {info['model']:<26} {did:<19} {info['actual_cost_usd']:>9.6f} USD")


def main() -> None:
    # Short answers (32 tokens at most) keep each step's worst case, reserved before it, small.
    chat = ChatOmniRoute(candidates=[stand_in(m) for m in MODELS], max_tokens=32, budget=Budget(usd=0.01))
    budgets = {"acme": 0.05, "acme/ada": 0.04, "acme/bob": 0.00025}
    for scope, usd in budgets.items():
        chat.router.set_budget(scope, Budget(usd=usd))

    # The agent's own model is the router itself; the middleware picks each call's budget scope.
    per_user = OmniRouteMiddleware(chat, scope=lambda request: f"acme/{request.runtime.context.name}")
    support = create_agent(chat, tools=[output_price], middleware=[per_user], context_schema=User,
                           checkpointer=InMemorySaver())
    print("per-user budgets:")
    for user, topics in (("ada", TOPICS[:2]), ("bob", TOPICS)):
        for i, topic in enumerate(topics):
            config = {"configurable": {"thread_id": f"{user}-{i}"}}
            question = {"messages": [{"role": "user", "content": f"What does '{topic}' charge for output?"}]}
            try:
                show(user, support.invoke(question, config, context=User(user))["messages"])
            except BudgetExceeded as refused:
                show(user, support.get_state(config).values["messages"])  # the steps before, checkpointed
                print(f"  {user:<6} refused: {refused}")
                break

    print("streamed:   ", end="")
    question = {"messages": [{"role": "user", "content": f"What does '{TOPICS[-1]}' charge for output?"}]}
    for chunk, _ in support.stream(question, {"configurable": {"thread_id": "ada-stream"}}, context=User("ada"),
                                   stream_mode="messages"):
        if isinstance(chunk, AIMessageChunk):
            print(chunk.text, end="", flush=True)

    # Without scope=, each conversation thread is the budget (`configurable["thread_id"]`).
    analyst = create_agent(chat, tools=[output_price], middleware=[OmniRouteMiddleware(chat)],
                           response_format=ProviderStrategy(Verdict))
    for i, topic in enumerate(TOPICS[:2]):
        state = analyst.invoke({"messages": [{"role": "user", "content": f"Is '{topic}' 'dear'?"}]},
                               {"configurable": {"thread_id": f"review-{i}"}})
        print(f"\nstructured: {state['structured_response']!r}", end="")

    print(f"\n\n{'scope':<10} {'budget':>9} {'spent':>9} {'left':>9} {'calls':>5}  models")
    for scope in (*budgets, "review-0", "review-1"):
        s = chat.router.budget_state(scope)
        models = ", ".join(f"{m.split('/')[-1]} ${usd:.5f}" for m, usd in sorted(s.by_model.items()))
        print(f"{scope:<10} {s.budget.usd:>9.6f} {s.committed:>9.6f} {s.remaining:>9.6f} {s.requests:>5}  {models}")


if __name__ == "__main__":
    main()
