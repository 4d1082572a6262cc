"""OmniRouteLLM as a FunctionAgent's LLM: tool requests go to tool-capable candidates, each turn is charged."""

from __future__ import annotations

import pytest
from li_fakes import CHEAP, EXPENSIVE, UsageLLM, candidate
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import MockLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from omniroute_li import OmniRouteLLM
from shared_core import Budget


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def _charged(llm: OmniRouteLLM, fake: UsageLLM, name: str) -> float:
    return sum(llm.router.candidate(name).cost(p, c) for p, c in fake.usage_log)


@pytest.mark.parametrize("streaming", [True, False])
async def test_agent_turns_with_tools_skip_the_candidate_that_cannot_call_them(streaming):
    # GPT-4's prior is the best, but this GPT-4 is a MockLLM without tool calling.
    tools_fake = UsageLLM(label="small", reply="The product is", tool_kwargs={"a": 6, "b": 7})
    llm = OmniRouteLLM(
        [candidate(EXPENSIVE, MockLLM(), supports_tools=False), candidate(CHEAP, tools_fake)], budget=Budget(usd=1.0)
    )
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm, streaming=streaming)
    result = await agent.run(user_msg="What is 6 times 7?")
    assert result.response.content == "The product is: 42"
    assert tools_fake.calls == 2  # the tool call, then the answer after its result
    assert result.raw["usage"]["completion_tokens"] == tools_fake.usage_log[-1][1]
    state = llm.router.budget_state("default")
    assert state.by_model == {CHEAP: pytest.approx(_charged(llm, tools_fake, CHEAP))}
    assert state.requests == 2 and state.reserved == 0
    assert llm.complete("Say hi").additional_kwargs["omniroute"]["model"] == EXPENSIVE  # no tools: best prior


async def test_a_failed_tool_turn_falls_back_and_the_next_candidate_formats_the_tools_itself():
    # UsageLLM rejects tool arguments prepared by another candidate, as providers reject foreign formats.
    big = UsageLLM(label="big", reply="It is", tool_kwargs={"a": 6, "b": 7}, failures=1)
    small = UsageLLM(label="small", reply="It is", tool_kwargs={"a": 6, "b": 7})
    llm = OmniRouteLLM([candidate(EXPENSIVE, big), candidate(CHEAP, small)], budget=Budget(usd=1.0))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    result = await agent.run(user_msg="What is 6 times 7?")
    assert result.response.content == "It is: 42"
    assert (big.calls, small.calls) == (2, 1)  # big failed the tool turn, small made the call, big answered
    state = llm.router.budget_state("default")
    assert state.by_model == {
        EXPENSIVE: pytest.approx(_charged(llm, big, EXPENSIVE)), CHEAP: pytest.approx(_charged(llm, small, CHEAP))
    }
    assert state.reserved == 0 and llm.router.store.open_reservations() == 0


async def test_agent_with_mock_function_calling_candidates_counts_tokens_itself():
    called = []

    def lookup(city: str = "Paris") -> str:
        """Look up a city's population."""
        called.append(city)
        return "2.1 million"

    cands = [candidate(EXPENSIVE, MockFunctionCallingLLM()), candidate(CHEAP, MockFunctionCallingLLM())]
    llm = OmniRouteLLM(cands, budget=Budget(usd=1.0))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(lookup)], llm=llm)
    result = await agent.run(user_msg="Population of Paris?")
    assert called == ["Paris"] and result.response.content == "Tool calls complete."
    state = llm.router.budget_state("default")
    # MockFunctionCallingLLM reports no usage: both turns are charged from the router's own counts.
    assert state.requests == 2 and set(state.by_model) == {EXPENSIVE} and state.committed > 0 and state.reserved == 0


def test_predict_and_call_routes_the_sync_tool_path():
    fake = UsageLLM(label="small", tool_kwargs={"a": 3, "b": 5})
    llm = OmniRouteLLM([candidate(CHEAP, fake)])
    answer = llm.predict_and_call([FunctionTool.from_defaults(multiply)], user_msg="3 times 5?")
    assert answer.response == "15" and fake.calls == 1
    assert llm.router.store.open_reservations() == 0


def test_a_tool_call_without_tools_is_a_plain_chat_any_candidate_may_answer():
    llm = OmniRouteLLM([candidate(EXPENSIVE, MockLLM(), supports_tools=False), candidate(CHEAP, UsageLLM())])
    response = llm.chat_with_tools([], user_msg="Say hi")
    assert response.additional_kwargs["omniroute"]["model"] == EXPENSIVE  # the best prior, no tools needed
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="no tool calls"):
        llm.get_tool_calls_from_response(response)
    assert llm.router.store.open_reservations() == 0


def test_structured_predict_goes_through_a_tool_capable_candidate():
    class Product(BaseModel):
        value: int

    fake = UsageLLM(label="small", tool_kwargs={"value": 42})
    llm = OmniRouteLLM(
        [candidate(EXPENSIVE, MockLLM(), supports_tools=False), candidate(CHEAP, fake)], budget=Budget(usd=1.0)
    )
    assert llm.structured_predict(Product, PromptTemplate("What is {x}?"), x="6 * 7") == Product(value=42)
    state = llm.router.budget_state("default")
    assert fake.calls == 1 and state.by_model == {CHEAP: pytest.approx(_charged(llm, fake, CHEAP))}
    assert state.reserved == 0
