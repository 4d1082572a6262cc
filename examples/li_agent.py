"""Two LlamaIndex FunctionAgents calling tools through OmniRoute, each on its own budget inside a tenant's.

Offline: stand-in LLMs priced and rated as RouterBench models. GPT-4 (the best prior) cannot call
tools in this setup, so tool turns go to GPT-3.5 or Mistral-7B, whichever the agent's budget
affords; a plain question with no tools still goes to GPT-4. Run: python examples/li_agent.py
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MessageRole, MockLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool

from omniroute_li import OmniRouteLLM
from shared_core import Budget, Candidate
from shared_core.defaults import default_candidates


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def scripted(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """A stand-in tool-calling model: multiplies the two numbers it is asked about, then reports."""
    last = messages[-1]
    if last.role == MessageRole.TOOL:
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"The product is {last.content}.")
    a, b = (int(n) for n in re.findall(r"\d+", last.content or "")[:2])
    call = ToolCallBlock(tool_call_id="call-1", tool_name="multiply", tool_kwargs={"a": a, "b": b})
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])


def stand_in(name: str, tools: bool) -> Candidate:
    """RouterBench's candidate `name` (real prices, prior accuracy) with an offline model."""
    base = next(c for c in default_candidates() if c.name == name)
    model = MockFunctionCallingLLM(response_generator=scripted) if tools else MockLLM(max_tokens=12)
    return base.model_copy(update={"model": model, "supports_tools": tools})


async def main() -> None:
    llm = OmniRouteLLM([
        stand_in("gpt-4-1106-preview", tools=False),
        stand_in("gpt-3.5-turbo-1106", tools=True),
        stand_in("mistralai/mistral-7b-chat", tools=True),
    ])
    router = llm.router
    router.set_budget("acme", Budget(usd=1.0))  # the tenant: both agents must fit inside it
    router.set_budget("acme/analyst", Budget(usd=5.0, horizon=20))
    router.set_budget("acme/intern", Budget(usd=0.001, horizon=20))
    tool = FunctionTool.from_defaults(multiply)

    for agent_name in ("analyst", "intern"):
        agent = FunctionAgent(tools=[tool], llm=llm.for_session(f"acme/{agent_name}"), name=agent_name)
        result = await agent.run(user_msg="What is 12 times 34?")
        state = router.budget_state(f"acme/{agent_name}")
        print(f"{agent_name:<8} {result.response.content:<24} ${state.committed:.6f} via {', '.join(state.by_model)}")

    plain = llm.for_session("acme/analyst").complete("Say hello.").additional_kwargs["omniroute"]
    print(f"no tools -> {plain['model']} (${plain['actual_cost_usd']:.6f})")
    tenant = router.budget_state("acme")
    print(f"tenant acme: ${tenant.committed:.6f} committed, ${tenant.reserved} reserved")


if __name__ == "__main__":
    asyncio.run(main())
