"""Candidate.from_model: prices and limits from genai-prices' catalogue, capabilities from the framework model."""

from __future__ import annotations

import logging

import genai_prices
import pytest
from genai_prices import calc_price
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import GenericFakeChatModel
from langchain_openai import ChatOpenAI
from llama_index.core.llms import MockLLM
from llama_index.llms.openai import OpenAI

from omniroute_lc import ChatOmniRoute
from omniroute_lc.fakes import FakeToolChatModel
from omniroute_li import OmniRouteLLM
from shared_core import Budget, Candidate, Usage
from shared_core.pricing import price

EXACT = 1e-12  # USD


def catalogue(model: str, provider: str):
    """genai-prices' own entry for the model: (its ModelPrice, its ModelInfo)."""
    found = calc_price(genai_prices.Usage(), model, provider_id=provider)
    return found.model_price, found.model


def mtok(value) -> float | None:
    """A catalogue price (a Decimal, or tiered prices read at their base tier) as USD per 1M tokens."""
    return None if value is None else float(getattr(value, "base", value))


def assert_catalogue_prices(candidate: Candidate, model: str, provider: str) -> None:
    prices, info = catalogue(model, provider)
    assert candidate.input_price == mtok(prices.input_mtok)
    assert candidate.output_price == mtok(prices.output_mtok)
    assert candidate.cache_read_price == mtok(prices.cache_read_mtok)
    assert candidate.cache_write_price == mtok(prices.cache_write_mtok)
    assert candidate.context_window == info.context_window


def test_chat_openai_is_priced_by_the_catalogue():
    c = Candidate.from_model(ChatOpenAI(model="gpt-4o", api_key="x"), prior_quality=0.88)
    assert_catalogue_prices(c, "gpt-4o", "openai")
    assert (c.name, c.provider, c.prior_quality) == ("gpt-4o", "openai", 0.88)
    assert c.cache_read_price < c.input_price and c.cache_write_price is None  # OpenAI bills no cache writes
    assert c.supports_tools and c.supports_structured_output  # the model profile says so


def test_chat_anthropic_is_priced_by_the_catalogue_with_cache_writes():
    c = Candidate.from_model(ChatAnthropic(model="claude-3-5-sonnet-latest", api_key="x"))
    assert_catalogue_prices(c, "claude-3-5-sonnet-latest", "anthropic")
    assert c.cache_write_price > c.input_price > c.cache_read_price
    assert c.provider == "anthropic"


def test_a_llamaindex_openai_llm_is_priced_by_the_catalogue():
    c = Candidate.from_model(OpenAI(model="gpt-4o", api_key="x"))
    assert_catalogue_prices(c, "gpt-4o", "openai")
    assert c.supports_tools  # metadata.is_function_calling_model
    assert not Candidate.from_model(OpenAI(model="gpt-3.5-turbo-instruct", api_key="x")).supports_tools


def test_a_provider_model_string_and_the_base_url_name_the_provider():
    assert_catalogue_prices(Candidate.from_model("anthropic:claude-3-5-haiku-latest"), "claude-3-5-haiku-latest",
                            "anthropic")
    # ChatOpenAI pointed at Groq's OpenAI-compatible endpoint is billed by Groq.
    groq = Candidate.from_model(ChatOpenAI(model="llama-3.1-8b-instant", base_url="https://api.groq.com/openai/v1",
                                           api_key="x"))
    assert groq.input_price == mtok(catalogue("llama-3.1-8b-instant", "groq")[0].input_mtok)


def test_explicit_values_win():
    c = Candidate.from_model(ChatOpenAI(model="gpt-4o", api_key="x"), name="gpt", input_price=1.0,
                             cache_read_price=0.5, context_window=8_000, supports_tools=False)
    assert (c.name, c.input_price, c.cache_read_price, c.context_window, c.supports_tools) == (
        "gpt", 1.0, 0.5, 8_000, False)
    assert c.output_price == mtok(catalogue("gpt-4o", "openai")[0].output_mtok)  # not overridden


def test_the_models_own_limits_apply_as_when_an_adapter_binds_it():
    c = Candidate.from_model(ChatOpenAI(model="gpt-4o", api_key="x", max_tokens=300))
    assert c.max_output_tokens == 300  # the client's cap lowers the default
    # A profile's smaller input window beats the catalogue's (the provider would refuse more).
    small = ChatOpenAI(model="gpt-4o", api_key="x", profile={"max_input_tokens": 1_000})
    assert Candidate.from_model(small).context_window == 1_000


def test_an_unknown_model_names_what_to_pass():
    with pytest.raises(ValueError, match=r"does not know the model 'no-such-model' \(provider 'openai'\).*"
                                         r"input_price=\.\.\., output_price=\.\.\.\) in USD per 1M tokens"):
        Candidate.from_model(ChatOpenAI(model="no-such-model", api_key="x"))
    # A provider the catalogue lacks never borrows another provider's price for the same name.
    with pytest.raises(ValueError, match="'llama3' \\(provider 'ollama'\\)"):
        Candidate.from_model("ollama:llama3")
    local = Candidate.from_model("ollama:llama3", input_price=0, output_price=0)
    assert (local.name, local.input_price, local.output_price) == ("llama3", 0.0, 0.0)
    with pytest.raises(ValueError, match="cannot tell which model GenericFakeChatModel is: pass name="):
        Candidate.from_model(GenericFakeChatModel(messages=iter([])))
    with pytest.raises(TypeError, match="LangChain chat model, a LlamaIndex LLM or a 'provider:model' string"):
        Candidate.from_model(42)


@pytest.mark.parametrize(("model", "provider", "usage"), [
    (ChatOpenAI(model="gpt-4o", api_key="x"), "openai",
     Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=10_000, reasoning_tokens=100)),
    (ChatAnthropic(model="claude-3-5-sonnet-latest", api_key="x"), "anthropic",
     Usage(input_tokens=9_000, output_tokens=321, cache_read_tokens=4_000, cache_write_tokens=3_000)),
    # Tiered prices, below the tier: the base tier is the bill.
    (ChatAnthropic(model="claude-sonnet-4-5", api_key="x"), "anthropic",
     Usage(input_tokens=150_000, output_tokens=2_000, cache_read_tokens=100_000, cache_write_tokens=20_000)),
    (OpenAI(model="gpt-4o-mini", api_key="x"), "openai",
     Usage(input_tokens=5_000, output_tokens=50, cache_read_tokens=4_096)),
], ids=["gpt-4o", "claude-3-5-sonnet", "claude-sonnet-4-5-tiered", "li-gpt-4o-mini"])
def test_omniroutes_cost_of_a_cached_call_is_genai_prices_cost(model, provider, usage):
    c = Candidate.from_model(model)
    theirs = calc_price(
        genai_prices.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                           cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens),
        model.model if hasattr(model, "model") else model.model_name, provider_id=provider,
    ).total_price
    assert price(c, usage) == pytest.approx(float(theirs), abs=EXACT)
    assert usage.input_tokens <= c.context_window


def test_a_tier_inside_the_window_cuts_the_window_to_where_base_prices_hold(caplog):
    prices, info = catalogue("gemini-1.5-pro", "google")
    tier = min(t.start for t in prices.input_mtok.tiers)
    assert tier < info.context_window  # the catalogue's own data: the premise of this test
    assert Candidate.from_model("google:gemini-1.5-pro").context_window == tier
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        wide = Candidate.from_model("google:gemini-1.5-pro", context_window=info.context_window)
    assert wide.context_window == info.context_window and wide.input_price == mtok(prices.input_mtok)
    assert f"above {tier} input tokens at a dearer tier" in caplog.text


def test_prices_are_never_fetched(monkeypatch):
    def fetch(*args, **kwargs):
        raise AssertionError("genai-prices tried to fetch price updates")

    monkeypatch.setattr(genai_prices.UpdatePrices, "start", fetch)
    monkeypatch.setattr(genai_prices.UpdatePrices, "fetch", fetch)
    monkeypatch.setattr(genai_prices.update_prices.httpx2, "get", fetch)
    for model in (ChatOpenAI(model="gpt-4o", api_key="x"), ChatAnthropic(model="claude-3-5-haiku-latest", api_key="x"),
                  OpenAI(model="gpt-4o-mini", api_key="x"), "gemini-1.5-flash"):
        Candidate.from_model(model)
    assert genai_prices.update_prices._shared_updater.thread is None  # no background updater was started


def test_llamaindex_tool_support_is_read_when_not_stated():
    # Today's error stays for a stated supports_tools=True; unstated, it is read from the LLM.
    mock = Candidate(name="mock", model=MockLLM(), input_price=1, output_price=2, prior_quality=0.5)
    caller = Candidate.from_model(OpenAI(model="gpt-4o", api_key="x"), name="gpt", prior_quality=0.9)
    llm = OmniRouteLLM([mock, caller])
    assert not llm.router.candidate("mock").supports_tools and llm.router.candidate("gpt").supports_tools
    assert not Candidate.from_model(MockLLM(), name="m", input_price=1, output_price=2).supports_tools
    with pytest.raises(ValueError, match="pass supports_tools=False"):
        OmniRouteLLM([mock.model_copy(update={"supports_tools": True})])


def test_langchain_capabilities_are_read_when_not_stated():
    no_tools = ChatOpenAI(model="gpt-4o", api_key="x", profile={"tool_calling": False, "structured_output": False})
    c = Candidate.from_model(no_tools)
    assert not c.supports_tools and not c.supports_structured_output
    plain = dict(input_price=1, output_price=1, prior_quality=0.5)
    text_only = Candidate(name="text", model=GenericFakeChatModel(messages=iter([])), **plain)
    stated = Candidate(name="stated", model=GenericFakeChatModel(messages=iter([])), supports_structured_output=True,
                       **plain)
    tools = Candidate(name="tools", model=FakeToolChatModel(), **plain)
    chat = ChatOmniRoute(candidates=[text_only, stated, tools])
    read = {c.name: (c.supports_tools, c.supports_structured_output) for c in chat.router.candidates}
    assert read == {"text": (False, False), "stated": (False, True), "tools": (True, True)}


def test_a_routed_call_is_charged_the_catalogue_price_of_its_billed_usage(provider):
    def client(model: str) -> ChatOpenAI:
        return ChatOpenAI(model=model, base_url=provider.openai_url, api_key="test", max_retries=0, timeout=10)

    # The local server's URL names no provider: the client's own (OpenAI) is the catalogue's.
    gpt = Candidate.from_model(client("gpt-4o"), name="gpt", prior_quality=0.9)
    mini = Candidate.from_model(client("gpt-4o-mini"), name="mini", prior_quality=0.6)
    for c in (gpt, mini):
        assert_catalogue_prices(c, c.model.model_name, "openai")
        provider.configure(c.model.model_name, input_price=c.input_price, output_price=c.output_price,
                           cache_read_price=c.cache_read_price, cache_read_tokens=1_024)
    chat = ChatOmniRoute(candidates=[gpt, mini], budget=Budget(usd=1.0), session="s")
    prompt = "A long system prompt that the provider caches. " * 200
    for model in ("gpt", "mini", None):
        chat.invoke(prompt, **({"model": model} if model else {}))

    bills = provider.requests
    assert len(bills) == 3 and all(b.cache_read_tokens == 1_024 for b in bills)
    catalogue_usd = sum(
        calc_price(genai_prices.Usage(input_tokens=b.prompt_tokens, output_tokens=b.completion_tokens,
                                      cache_read_tokens=b.cache_read_tokens), b.model, provider_id="openai").total_price
        for b in bills
    )
    state = chat.router.budget_state("s")
    assert state.committed == pytest.approx(float(catalogue_usd), abs=EXACT)
    assert state.committed == pytest.approx(provider.bill_usd, abs=EXACT)
    assert state.reserved == 0


def test_prices_that_change_with_the_time_of_day_are_taken_at_their_dearest():
    # DeepSeek bills half price off-peak: a candidate built off-peak must not undercount peak calls.
    from datetime import datetime, timezone

    candidate = Candidate.from_model("deepseek:deepseek-chat")
    day = [datetime(2026, 6, 1, hour, 15, tzinfo=timezone.utc) for hour in range(24)]
    found = [calc_price(genai_prices.Usage(), "deepseek-chat", provider_id="deepseek", genai_request_timestamp=t)
             for t in day]
    inputs = {mtok(f.model_price.input_mtok) for f in found}
    assert len(inputs) > 1  # the catalogue does vary it over the day
    assert candidate.input_price == max(inputs)
    assert candidate.output_price == max(mtok(f.model_price.output_mtok) for f in found)


def test_a_tiered_model_without_a_catalogued_window_takes_prompts_up_to_its_dearer_tier():
    candidate = Candidate.from_model("google:gemini-2.5-pro")
    _, info = catalogue("gemini-2.5-pro", "google")
    assert info.context_window is None and candidate.context_window == 200_000


def test_openai_models_count_with_their_own_encoding():
    assert Candidate.from_model("openai:gpt-4o").encoding == "o200k_base"
    assert Candidate.from_model("openai:gpt-4o", encoding="cl100k_base").encoding == "cl100k_base"
    assert Candidate.from_model("anthropic:claude-3-5-haiku-latest").encoding == "cl100k_base"


@pytest.mark.parametrize("name", ["qwen2:7b", "ft:gpt-4o-mini-2024-07-18:org::abc123"])
def test_a_colon_in_a_model_name_is_not_a_provider(name):
    candidate = Candidate.from_model(name, input_price=0.1, output_price=0.2)
    assert candidate.name == name


def test_a_wrongly_typed_override_is_a_validation_error_naming_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="context_window"):
        Candidate.from_model("google:gemini-2.5-pro", context_window="lots")
