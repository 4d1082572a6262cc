"""Tool calling and structured output through the router: capable candidates only, budgets settled."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from lc_fakes import FakeToolChatModel, candidate
from pydantic import BaseModel, Field

from omniroute_lc import ChatOmniRoute
from shared_core import Budget, NoFeasibleCandidate


@tool
def convert_currency(amount: float, currency: str) -> str:
    """Convert an amount of US dollars into another currency."""
    return f"{amount * 0.9:.2f} {currency}"


class Invoice(BaseModel):
    """An invoice line."""

    customer: str = Field(description="Who pays")
    amount: int = Field(description="How much, in dollars")


class RecordingFake(FakeToolChatModel):
    """A fake that keeps the kwargs of every call, to see what the router passed it."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(kwargs)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def _chat(**options: Any) -> ChatOmniRoute:
    # The highest-quality candidate cannot call tools; a mid one can, but its Candidate says no.
    return ChatOmniRoute(candidates=[
        candidate("text-only", GenericFakeChatModel(messages=iter(["x"] * 10)), input_price=1, output_price=2,
                  quality=0.95),
        candidate("no-tools", input_price=1, output_price=2, quality=0.9, supports_tools=False,
                  supports_structured_output=False),
        candidate("gpt-4o", RecordingFake(model_name="gpt-4o"), input_price=2.5, output_price=10.0, quality=0.85),
    ], budget=Budget(usd=1.0), **options)


def test_tool_calls_go_to_a_tool_capable_candidate_formatted_by_it():
    chat = _chat()
    message = chat.bind_tools([convert_currency], tool_choice="convert_currency").invoke(
        "Convert 120 dollars into 'EUR' please.", session="s"
    )
    assert message.response_metadata["omniroute"]["model"] == "gpt-4o"
    assert message.tool_calls[0]["name"] == "convert_currency"
    assert message.tool_calls[0]["args"] == {"amount": 120.0, "currency": "EUR"}
    # The candidate received its own binding: OpenAI-format tools and its tool_choice spelling.
    (kwargs,) = chat.router.candidate("gpt-4o").model.seen
    assert kwargs["tools"][0]["function"]["name"] == "convert_currency"
    assert kwargs["tool_choice"] == "convert_currency"
    info = message.response_metadata["omniroute"]
    assert chat.router.budget_state("s").committed == pytest.approx(info["actual_cost_usd"])


def test_tool_schemas_count_as_prompt_tokens():
    chat = _chat()
    plain = chat.invoke("Convert 120 dollars.", model="gpt-4o").response_metadata["omniroute"]
    with_tools = chat.bind_tools([convert_currency]).invoke("Convert 120 dollars.", model="gpt-4o")
    assert with_tools.response_metadata["omniroute"]["estimated_cost_usd"] > plain["estimated_cost_usd"]


def test_forcing_a_candidate_that_cannot_call_tools_is_refused():
    chat = _chat()
    with pytest.raises(NoFeasibleCandidate, match="no-tools: cannot call tools"):
        chat.bind_tools([convert_currency]).invoke("Convert 120 dollars.", model="no-tools")


def test_a_tool_loop_answers_after_the_tool_result():
    chat = _chat().bind_tools([convert_currency])
    question = HumanMessage("Convert 120 dollars into 'EUR'.")
    call = chat.invoke([question])
    result = convert_currency.invoke(call.tool_calls[0])
    answer = chat.invoke([question, call, result])
    assert not answer.tool_calls
    assert "108.00 EUR" in answer.text


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_by_every_method(method):
    chat = _chat()
    structured = chat.with_structured_output(Invoice, method=method)
    invoice = structured.invoke("Bill 'Ada Lovelace' 250 dollars.", config={"configurable": {"session_id": "s"}})
    assert invoice == Invoice(customer="Ada Lovelace", amount=250)
    streamed = list(structured.stream("Bill 'Ada' 3 dollars.", config={"configurable": {"session_id": "s"}}))
    assert streamed[-1] == Invoice(customer="Ada", amount=3)
    state = chat.router.budget_state("s")
    assert state.requests == 2 and state.reserved == 0
    assert state.by_model == {"gpt-4o": pytest.approx(state.committed)}


def test_json_schema_is_forwarded_to_the_chosen_candidate():
    chat = _chat()
    chat.with_structured_output(Invoice, method="json_schema").invoke("Bill 'Ada' 3 dollars.")
    (kwargs,) = chat.router.candidate("gpt-4o").model.seen
    assert kwargs["response_format"]["type"] == "json_schema"
    assert "ls_structured_output_format" not in kwargs


def test_structured_output_with_raw_message():
    chat = _chat()
    out = chat.with_structured_output(Invoice, method="json_schema", include_raw=True).invoke("Bill 'Ada' 3 dollars.")
    assert out["parsed"] == Invoice(customer="Ada", amount=3)
    assert isinstance(out["raw"], AIMessage)
    assert out["raw"].response_metadata["omniroute"]["model"] == "gpt-4o"
    assert out["parsing_error"] is None


def test_unknown_structured_output_method_is_rejected():
    with pytest.raises(ValueError, match="unknown structured output method 'xml'"):
        _chat().with_structured_output(Invoice, method="xml")


@pytest.mark.parametrize("tools", [[], [convert_currency]])
def test_bind_tools_response_format_asks_each_candidate_for_its_json_schema_mode(tools):
    # As LangChain agents bind a ProviderStrategy: OpenAI's json_schema format, beside the tools.
    response_format = {"type": "json_schema", "json_schema": {"name": "Invoice", "schema": Invoice.model_json_schema()}}
    chat = _chat()
    answer = chat.bind_tools(tools, response_format=response_format).invoke("Bill 'Ada' 3 dollars.", tool_choice="none")
    assert answer.response_metadata["omniroute"]["model"] == "gpt-4o"  # the others have no JSON schema mode
    assert Invoice.model_validate_json(answer.text) == Invoice(customer="Ada", amount=3)
    (kwargs,) = chat.router.candidate("gpt-4o").model.seen
    assert kwargs["response_format"]["type"] == "json_schema"
    assert kwargs["response_format"]["schema"]["title"] == "Invoice"
