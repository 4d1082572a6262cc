"""Which session a call charges, from kwargs, bindings, the model, run config and defaults."""

from __future__ import annotations

import operator
from typing import Annotated

import pytest
from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from lc_fakes import two_candidates
from typing_extensions import TypedDict

from omniroute_lc import ChatOmniRoute
from shared_core import Budget

PROMPT = "Summarise the plot of Hamlet."
CONFIG = {"configurable": {"session_id": "from-session-id", "thread_id": "from-thread"},
          "metadata": {"session_id": "from-metadata"}}


def _charged(message) -> str:
    return message.response_metadata["omniroute"]["session"]


@pytest.fixture
def chat() -> ChatOmniRoute:
    return ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0), default_session="from-default")


def test_precedence_from_call_to_default(chat):
    pinned = chat.for_session("from-model")
    assert _charged(pinned.bind(session="from-bind").invoke(PROMPT, CONFIG, session="from-call")) == "from-call"
    assert _charged(pinned.bind(session="from-bind").invoke(PROMPT, CONFIG)) == "from-bind"
    assert _charged(pinned.invoke(PROMPT, CONFIG)) == "from-model"
    assert _charged(chat.invoke(PROMPT, CONFIG)) == "from-session-id"
    assert _charged(chat.invoke(PROMPT, {**CONFIG, "configurable": {"thread_id": "from-thread"}})) == "from-thread"
    assert _charged(chat.invoke(PROMPT, {"metadata": CONFIG["metadata"]})) == "from-metadata"
    assert _charged(chat.invoke(PROMPT)) == "from-default"
    assert _charged(ChatOmniRoute(candidates=two_candidates()).invoke(PROMPT)) is None
    for scope in ("from-call", "from-bind", "from-model", "from-session-id", "from-thread", "from-metadata",
                  "from-default"):
        assert chat.router.budget_state(scope).requests == 1


async def test_precedence_holds_when_streaming(chat):
    chunks = [c async for c in chat.for_session("from-model").astream(PROMPT, CONFIG)]
    assert [_charged(c) for c in chunks if "omniroute" in c.response_metadata] == ["from-model"]
    chunks = list(chat.stream(PROMPT, CONFIG))
    assert [_charged(c) for c in chunks if "omniroute" in c.response_metadata] == ["from-session-id"]


def test_config_reaches_the_model_inside_a_chain(chat):
    chain = ChatPromptTemplate.from_messages([("human", "Summarise {book}.")]) | chat
    message = chain.invoke({"book": "Hamlet"}, config={"configurable": {"session_id": "chain-user"}})
    assert _charged(message) == "chain-user"
    batch = chain.batch([{"book": "Lear"}, {"book": "Othello"}],
                        config=[{"configurable": {"session_id": s}} for s in ("u1", "u2")])
    assert [_charged(m) for m in batch] == ["u1", "u2"]


def test_a_pinned_model_keeps_its_session_through_bind_tools(chat):
    @tool
    def lookup(topic: str) -> str:
        """Look a topic up."""
        return topic

    message = chat.for_session("agent-7").bind_tools([lookup]).invoke("Look up 'Hamlet'.", CONFIG)
    assert message.tool_calls[0]["args"] == {"topic": "Hamlet"}
    assert _charged(message) == "agent-7"


def test_langgraph_thread_id_is_the_session(chat):
    class State(TypedDict):
        messages: Annotated[list[AnyMessage], operator.add]

    graph = StateGraph(State)
    graph.add_node("answer", lambda state: {"messages": [chat.invoke(state["messages"])]})
    graph.add_edge(START, "answer")
    app = graph.compile(checkpointer=InMemorySaver())
    out = app.invoke({"messages": [HumanMessage(PROMPT)]}, {"configurable": {"thread_id": "conversation-1"}})
    assert _charged(out["messages"][-1]) == "conversation-1"


def test_configurable_copies_share_the_budgets(chat):
    configurable = chat.configurable_fields(max_tokens=ConfigurableField(id="max_tokens"))
    message = configurable.invoke(PROMPT, {"configurable": {"max_tokens": 5, "session_id": "shared"}})
    assert message.usage_metadata["output_tokens"] <= 5
    assert chat.router.budget_state("shared").committed == pytest.approx(
        message.response_metadata["omniroute"]["actual_cost_usd"]
    )


def test_bad_session_names_are_rejected(chat):
    with pytest.raises(ValueError, match="scope must be a non-empty path"):
        chat.for_session("acme//agent")
