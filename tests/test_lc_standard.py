"""LangChain's standard chat-model test suites, run offline against ChatOmniRoute over fake candidates."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from lc_fakes import two_candidates

from omniroute_lc import ChatOmniRoute
from shared_core import Budget


class _Wiring:
    @property
    def chat_model_class(self) -> type[ChatOmniRoute]:
        return ChatOmniRoute

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"candidates": two_candidates(), "budget": Budget(usd=5.0)}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A router has no API key or client retries of its own (its candidates' clients do), and
        # refuses keywords it does not know; temperature, max_tokens, timeout and stop it takes.
        params = dict(super().standard_chat_model_params)
        for own_client_setting in ("api_key", "max_retries"):
            params.pop(own_client_setting, None)
        return params

    @property
    def model_override_value(self) -> str:
        # The router's default choice is gpt-4o (higher prior quality, no pacing): override to the other.
        return "gpt-4o-mini"


class TestChatOmniRouteUnit(_Wiring, ChatModelUnitTests):
    """Construction, tool binding, structured output and tracing params."""


class TestChatOmniRouteIntegration(_Wiring, ChatModelIntegrationTests):
    """Every call through the router, with structured output by function calling (the default)."""

    @property
    def supports_anthropic_inputs(self) -> bool:
        # Anthropic-style histories (tool_use and thinking blocks) must convert for token counting.
        return True


class TestChatOmniRouteJsonSchema(_Wiring, ChatModelIntegrationTests):
    """The same suite with structured output forwarded to the chosen candidate's JSON-schema mode."""

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "json_schema"}

    @property
    def supports_json_mode(self) -> bool:
        return True


def test_the_suites_exercise_tools_structured_output_and_model_override():
    """The standard suites skip what a model does not claim; make sure nothing important is skipped."""
    for suite in (TestChatOmniRouteUnit(), TestChatOmniRouteIntegration(), TestChatOmniRouteJsonSchema()):
        assert suite.has_tool_calling and suite.has_structured_output
        assert suite.model_override_value in {c.name for c in two_candidates()}
    assert TestChatOmniRouteJsonSchema().supports_json_mode
