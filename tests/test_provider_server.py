"""The local test provider (tests/provider_server.py), driven by the REAL clients: the openai and
anthropic SDKs through langchain-openai, langchain-anthropic and LlamaIndex, over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from provider_server import (
    Behaviour,
    ProviderServer,
    answer_text,
    anthropic_image_tokens,
    count_tokens,
    image_size,
    openai_image_tokens,
    sample_from_schema,
)
from pydantic import BaseModel

GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
HELLO_PROMPT = 3 + 1 + 1 + 3  # one message: 3 + tokens("user") + tokens("hello"), + 3 reply priming
TOL = 1e-12


# ----- helpers -------------------------------------------------------------------------------------


def chat_openai(provider: ProviderServer, **kwargs) -> ChatOpenAI:
    kwargs.setdefault("timeout", 5)
    return ChatOpenAI(
        base_url=provider.openai_url, api_key="test", model=kwargs.pop("model", GPT), max_retries=0, **kwargs
    )


def chat_anthropic(provider: ProviderServer, **kwargs) -> ChatAnthropic:
    kwargs.setdefault("timeout", 5)
    return ChatAnthropic(
        base_url=provider.anthropic_url, api_key="test", model=kwargs.pop("model", CLAUDE), max_retries=0, **kwargs
    )


def lc_cost(usage: dict, b: Behaviour) -> float:
    """Price a LangChain usage_metadata dict (input_tokens is the TOTAL prompt, cache included)."""
    details = usage.get("input_token_details") or {}
    read, write = details.get("cache_read", 0) or 0, details.get("cache_creation", 0) or 0
    return b.cost(usage["input_tokens"], usage["output_tokens"], read, write)


def merged(chunks):
    total = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    return total


def png(width: int, height: int) -> bytes:
    """A real (grey, all-black) PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = (b"\x00" + bytes(width)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """Just enough JPEG (SOI, APP0, SOF0) for the size reader."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


# ----- pure helpers --------------------------------------------------------------------------------


def test_answer_text_has_exactly_known_token_counts():
    for n in (1, 2, 7, 20, 333):
        assert count_tokens(answer_text(n)) == n
    assert answer_text(0) == ""


def test_image_rules_and_size_readers():
    assert image_size(png(1024, 1024)) == (1024, 1024)
    assert image_size(png(3, 7)) == (3, 7)
    assert image_size(jpeg_header(640, 480)) == (640, 480)
    assert image_size(b"not an image") is None
    assert openai_image_tokens(1024, 1024, "high") == 765  # -> 768x768 -> 4 tiles
    assert openai_image_tokens(1024, 1024, "low") == 85
    assert openai_image_tokens(512, 512, "auto") == 85 + 170
    assert openai_image_tokens(2048, 4096, "high") == 85 + 170 * 6  # -> 1024x2048 -> 768x1536
    assert anthropic_image_tokens(1024, 1024) == 1399  # ceil(1048576 / 750)
    assert anthropic_image_tokens(3136, 1568) == anthropic_image_tokens(1568, 784) == 1640


def test_sample_from_schema():
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "f": {"type": "number"},
            "b": {"type": "boolean"},
            "a": {"type": "array", "items": {"type": "string"}},
            "o": {"type": "object"},
            "opt": {"type": "string"},
            "n": {"$ref": "#/$defs/Inner"},
            "e": {"enum": ["red", "blue"]},
        },
        "required": ["s", "i", "f", "b", "a", "o", "n", "e"],
        "$defs": {"Inner": {"type": "object", "properties": {"z": {"type": "string"}}, "required": ["z"]}},
    }
    assert sample_from_schema(schema) == {
        "s": "x",
        "i": 1,
        "f": 1,
        "b": True,
        "a": [],
        "o": {},
        "n": {"z": "x"},
        "e": "red",
    }


# ----- server basics -------------------------------------------------------------------------------


def test_server_lifecycle_and_unknown_routes():
    with ProviderServer() as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.openai_url == server.base_url + "/v1"
        assert server.anthropic_url == server.base_url
        response = httpx.post(server.base_url + "/v2/nothing", json={})
        assert response.status_code == 404 and "error" in response.json()
        assert httpx.get(server.openai_url + "/models").status_code == 404
    assert not server.running


def test_stop_interrupts_a_hang():
    import threading
    import time

    server = ProviderServer().start()
    server.configure(GPT, hang_s=30.0)
    errors = []

    def call():
        try:
            chat_openai(server, timeout=10).invoke("hello")
        except Exception as exc:  # noqa: BLE001 - we look at the type below
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    worker.join(5)
    assert time.monotonic() - started < 3 and not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)
    assert server.requests == []


def test_configure_rejects_unknown_fields(provider):
    with pytest.raises(TypeError):
        provider.configure(GPT, answer_token=3)
    assert provider.behaviour("never-configured") == Behaviour()


# ----- OpenAI through LangChain --------------------------------------------------------------------


def test_chat_openai_invoke_bill_matches_reported_usage(provider):
    b = provider.configure(GPT, input_price=3.0, output_price=15.0, answer_tokens=12)
    reply = chat_openai(provider).invoke("hello")
    assert reply.content == answer_text(12)
    usage = reply.usage_metadata
    assert usage["input_tokens"] == HELLO_PROMPT and usage["output_tokens"] == 12
    assert reply.response_metadata["finish_reason"] == "stop"
    (billed,) = provider.requests
    assert (billed.api, billed.stream, billed.status, billed.usage_reported) == ("openai", False, 200, True)
    assert billed.cap_sent is None  # ChatOpenAI sends no cap unless max_tokens is set
    assert abs(lc_cost(usage, b) - provider.bill_usd) < TOL
    assert provider.bill_usd == pytest.approx((HELLO_PROMPT * 3 + 12 * 15) / 1e6)
    assert provider.errors == []


def test_chat_openai_stream_with_and_without_usage(provider):
    b = provider.configure(GPT, answer_tokens=10, input_price=0.5, output_price=1.5)
    llm = chat_openai(provider)
    chunks = list(llm.stream("hello"))  # custom base_url: ChatOpenAI does NOT ask for stream usage by default
    assert merged(chunks).content == answer_text(10)
    assert merged(chunks).usage_metadata is None
    first = provider.requests[-1]
    assert first.stream and not first.usage_requested and not first.usage_reported
    assert "stream_options" not in first.body
    assert first.completion_tokens == 10  # billed anyway

    full = merged(llm.stream("hello", stream_usage=True))
    assert full.content == answer_text(10)
    assert full.response_metadata["finish_reason"] == "stop"
    second = provider.requests[-1]
    assert second.body["stream_options"] == {"include_usage": True} and second.usage_reported
    assert abs(lc_cost(full.usage_metadata, b) - second.cost_usd) < TOL
    assert provider.bill_usd == pytest.approx(first.cost_usd + second.cost_usd, abs=TOL)


def test_provider_that_never_reports_stream_usage(provider):
    provider.configure(GPT, stream_usage=False)
    full = merged(chat_openai(provider, stream_usage=True).stream("hello"))
    assert full.content == answer_text(20) and full.usage_metadata is None
    (billed,) = provider.requests
    assert billed.usage_requested and not billed.usage_reported and billed.cost_usd > 0


async def test_chat_openai_ainvoke_and_astream(provider):
    b = provider.configure(GPT, answer_tokens=6)
    llm = chat_openai(provider)
    reply = await llm.ainvoke("hello")
    assert reply.content == answer_text(6)
    full = None
    async for chunk in llm.astream("hello", stream_usage=True):
        full = chunk if full is None else full + chunk
    assert full.content == answer_text(6)
    reported = lc_cost(reply.usage_metadata, b) + lc_cost(full.usage_metadata, b)
    assert abs(reported - provider.bill_usd) < TOL


def test_chat_openai_cap_honoured_and_ignored(provider):
    provider.configure(GPT, answer_tokens=30)
    reply = chat_openai(provider, max_tokens=7).invoke("hello")
    assert reply.content == answer_text(7)
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata["output_tokens"] == 7
    billed = provider.requests[-1]
    assert billed.cap_param == "max_completion_tokens" and billed.cap_sent == 7  # not `max_tokens`!

    full = merged(chat_openai(provider, max_tokens=5).stream("hello", stream_usage=True))
    assert full.content == answer_text(5) and full.response_metadata["finish_reason"] == "length"
    assert full.usage_metadata["output_tokens"] == 5

    provider.configure(GPT, answer_tokens=30, ignore_cap=True)
    reply = chat_openai(provider, max_tokens=7).invoke("hello")
    assert reply.content == answer_text(30) and reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["output_tokens"] == 30 == provider.requests[-1].completion_tokens


def test_cap_budget_covers_reasoning_first(provider):
    provider.configure(GPT, answer_tokens=30, reasoning_tokens=4, overcount=3)
    reply = chat_openai(provider, max_tokens=10).invoke("hello")
    assert reply.content == answer_text(6)  # 10 - 4 reasoning
    assert reply.usage_metadata["output_tokens"] == 10
    assert reply.usage_metadata["output_token_details"]["reasoning"] == 4
    reply = chat_openai(provider).invoke("hello")  # no cap: 30 text + 4 reasoning + 3 overcount
    assert reply.usage_metadata["output_tokens"] == 37


def test_chat_openai_cache_and_reasoning_tokens(provider):
    b = provider.configure(
        GPT,
        cache_read_tokens=5,
        cache_write_tokens=2,
        cache_read_price=0.1,
        reasoning_tokens=9,
        overcount=2,
        answer_tokens=4,
    )
    reply = chat_openai(provider).invoke("hello")
    usage = reply.usage_metadata
    assert usage["input_tokens"] == HELLO_PROMPT  # OpenAI: prompt_tokens INCLUDES cached tokens
    assert usage["input_token_details"] == {"cache_read": 5}  # no cache writes on the OpenAI API
    assert usage["output_tokens"] == 4 + 9 + 2
    assert usage["output_token_details"] == {"reasoning": 9}
    assert abs(lc_cost(usage, b) - provider.bill_usd) < TOL
    assert provider.bill_usd == pytest.approx(((HELLO_PROMPT - 5) * 1.0 + 5 * 0.1 + 15 * 2.0) / 1e6)

    full = merged(chat_openai(provider).stream("hello", stream_usage=True))
    assert full.usage_metadata["input_token_details"] == {"cache_read": 5}
    assert full.usage_metadata["output_token_details"] == {"reasoning": 9}


def test_chat_openai_tool_round_trip(provider):
    b = provider.configure(GPT, answer_tokens=3)

    def get_weather(city: str, days: int, metric: bool = True) -> str:
        """Weather forecast for a city."""
        return "sunny"

    def get_time(zone: str) -> str:
        """The time in a zone."""
        return "noon"

    llm = chat_openai(provider).bind_tools([get_weather, get_time])
    question = HumanMessage("weather in Paris?")
    call = llm.invoke([question])
    (tool_call,) = call.tool_calls
    assert tool_call["name"] == "get_weather" and tool_call["args"] == {"city": "x", "days": 1}
    assert call.response_metadata["finish_reason"] == "tool_calls"
    expected_out = count_tokens("get_weather") + count_tokens(
        json.dumps({"city": "x", "days": 1}, separators=(",", ":"))
    )
    assert call.usage_metadata["output_tokens"] == expected_out

    answer = llm.invoke([question, call, ToolMessage("sunny", tool_call_id=tool_call["id"])])
    assert answer.content == answer_text(3) and not answer.tool_calls
    assert answer.usage_metadata["input_tokens"] > call.usage_metadata["input_tokens"]  # tool_calls JSON counted
    assert abs(lc_cost(call.usage_metadata, b) + lc_cost(answer.usage_metadata, b) - provider.bill_usd) < TOL

    forced = chat_openai(provider).bind_tools([get_weather, get_time], tool_choice="get_time").invoke([question])
    assert forced.tool_calls[0]["name"] == "get_time" and forced.tool_calls[0]["args"] == {"zone": "x"}

    streamed = merged(llm.stream([question], stream_usage=True))
    assert streamed.tool_calls[0]["args"] == {"city": "x", "days": 1}
    assert streamed.usage_metadata["output_tokens"] == expected_out


def test_chat_openai_structured_output(provider):
    class Person(BaseModel):
        name: str
        age: int
        tags: list[str]

    person = chat_openai(provider).with_structured_output(Person).invoke("who?")
    assert person == Person(name="x", age=1, tags=[])
    assert provider.requests[-1].body["response_format"]["type"] == "json_schema"
    text = json.dumps({"name": "x", "age": 1, "tags": []})
    assert provider.requests[-1].completion_tokens == count_tokens(text)

    json_mode = chat_openai(provider).with_structured_output(None, method="json_mode").invoke("json please")
    assert json_mode == {"answer": "x"}


def test_chat_openai_errors(provider):
    provider.configure(GPT, fail_status=500)
    with pytest.raises(openai.InternalServerError) as info:
        chat_openai(provider).invoke("hello")
    assert info.value.status_code == 500 and info.value.body["type"] == "server_error"

    provider.configure(GPT, fail_status=400)
    with pytest.raises(openai.BadRequestError):
        chat_openai(provider).invoke("hello")
    provider.configure(GPT, fail_status=429)
    with pytest.raises(openai.RateLimitError):
        chat_openai(provider).invoke("hello")
    with pytest.raises(openai.RateLimitError):
        list(chat_openai(provider).stream("hello"))
    assert [r.status for r in provider.requests] == [500, 400, 429, 429]
    assert provider.bill_usd == 0.0 and all(r.cost_usd == 0 and not r.usage_reported for r in provider.requests)


def test_fail_times_then_success_with_sdk_retries(provider):
    provider.configure(GPT, fail_status=503, fail_times=2, answer_tokens=3)
    with pytest.raises(openai.InternalServerError):
        chat_openai(provider).invoke("hello")
    reply = ChatOpenAI(base_url=provider.openai_url, api_key="test", model=GPT, max_retries=2, timeout=5).invoke(
        "hello"
    )
    assert reply.content == answer_text(3)  # second attempt failed, third succeeded (retry-after-ms: 1)
    assert [r.status for r in provider.requests] == [503, 503, 200]


def test_hang_times_out_the_client(provider):
    provider.configure(GPT, hang_s=5.0)
    with pytest.raises(openai.APITimeoutError):
        chat_openai(provider, timeout=0.2).invoke("hello")
    assert provider.wait_idle(3)
    (billed,) = provider.requests
    assert billed.status == 499 and billed.client_disconnected and billed.cost_usd == 0

    provider.configure(CLAUDE, hang_s=5.0)
    with pytest.raises(anthropic.APITimeoutError):
        chat_anthropic(provider, timeout=0.2).invoke("hello")
    assert provider.wait_idle(3)


def test_short_hang_is_just_latency(provider):
    provider.configure(GPT, hang_s=0.1, answer_tokens=2)
    assert chat_openai(provider).invoke("hello").content == answer_text(2)


def test_abandoned_stream_bills_what_was_sent(provider):
    provider.configure(GPT, answer_tokens=200, chunk_tokens=1, chunk_delay_s=0.01)
    llm = chat_openai(provider, stream_usage=True)
    seen = 0
    stream = llm.stream("hello")
    for chunk in stream:
        seen += count_tokens(chunk.content)
        if seen >= 5:
            break
    stream.close()
    assert provider.wait_idle(3)
    (billed,) = provider.requests
    assert billed.client_disconnected and not billed.usage_reported and billed.finished
    assert 5 <= billed.completion_tokens < 200
    assert billed.cost_usd == pytest.approx(
        provider.behaviour(GPT).cost(billed.prompt_tokens, billed.completion_tokens)
    )


def test_openai_image_tiles(provider):
    url = "data:image/png;base64," + base64.b64encode(png(1024, 1024)).decode()
    llm = chat_openai(provider)
    text_only = llm.invoke([HumanMessage(content=[{"type": "text", "text": "describe"}])]).usage_metadata[
        "input_tokens"
    ]
    for detail, tokens in (("high", 765), ("low", 85), ("auto", 765)):
        content = [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": url, "detail": detail}},
        ]
        assert llm.invoke([HumanMessage(content=content)]).usage_metadata["input_tokens"] == text_only + tokens
    remote = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]
    assert llm.invoke([HumanMessage(content=remote)]).usage_metadata["input_tokens"] == text_only + 765  # 1024x1024


def test_batch_is_thread_safe(provider):
    b = provider.configure(GPT, answer_tokens=5)
    replies = chat_openai(provider).batch([f"question {i}" for i in range(12)], config={"max_concurrency": 6})
    assert len(provider.requests) == 12
    assert abs(sum(lc_cost(r.usage_metadata, b) for r in replies) - provider.bill_usd) < TOL


# ----- Anthropic through LangChain -----------------------------------------------------------------


def test_chat_anthropic_invoke_stream_and_default_cap(provider):
    b = provider.configure(CLAUDE, answer_tokens=9, input_price=0.8, output_price=4.0)
    llm = chat_anthropic(provider)
    reply = llm.invoke("hello")
    assert reply.content == answer_text(9)
    assert reply.response_metadata["stop_reason"] == "end_turn"
    assert reply.usage_metadata["input_tokens"] == HELLO_PROMPT and reply.usage_metadata["output_tokens"] == 9
    billed = provider.requests[-1]
    assert billed.cap_sent == 4096  # ChatAnthropic always sends max_tokens (model-profile default)

    full = merged(llm.stream("hello"))
    assert full.content == answer_text(9) and full.response_metadata["stop_reason"] == "end_turn"
    assert full.usage_metadata["input_tokens"] == HELLO_PROMPT and full.usage_metadata["output_tokens"] == 9
    assert abs(lc_cost(reply.usage_metadata, b) + lc_cost(full.usage_metadata, b) - provider.bill_usd) < TOL


async def test_chat_anthropic_ainvoke(provider):
    b = provider.configure(CLAUDE, answer_tokens=4)
    reply = await chat_anthropic(provider).ainvoke("hello")
    assert reply.content == answer_text(4)
    assert abs(lc_cost(reply.usage_metadata, b) - provider.bill_usd) < TOL


def test_chat_anthropic_cap_honoured_and_ignored(provider):
    provider.configure(CLAUDE, answer_tokens=30)
    reply = chat_anthropic(provider, max_tokens=5).invoke("hello")
    assert reply.content == answer_text(5) and reply.response_metadata["stop_reason"] == "max_tokens"
    full = merged(chat_anthropic(provider, max_tokens=6).stream("hello"))
    assert full.content == answer_text(6) and full.usage_metadata["output_tokens"] == 6
    assert full.response_metadata["stop_reason"] == "max_tokens"
    provider.configure(CLAUDE, answer_tokens=30, ignore_cap=True)
    reply = chat_anthropic(provider, max_tokens=5).invoke("hello")
    assert reply.content == answer_text(30) and reply.usage_metadata["output_tokens"] == 30


def test_chat_anthropic_cache_tokens(provider):
    b = provider.configure(
        CLAUDE,
        cache_read_tokens=3,
        cache_write_tokens=4,
        cache_read_price=0.08,
        cache_write_price=1.0,
        input_price=0.8,
        reasoning_tokens=2,
    )
    llm = chat_anthropic(provider)
    for usage in (llm.invoke("hello").usage_metadata, merged(llm.stream("hello")).usage_metadata):
        assert usage["input_tokens"] == HELLO_PROMPT  # LangChain adds the cache tokens back
        assert usage["input_token_details"] == {"cache_read": 3, "cache_creation": 4}
        assert usage["output_tokens"] == 20 + 2 and usage["output_token_details"] == {"reasoning": 2}
    (first, second) = provider.requests
    raw = chat_anthropic(provider).invoke("hello").response_metadata["usage"]
    assert raw["input_tokens"] == HELLO_PROMPT - 7  # the wire format EXCLUDES cache tokens
    assert first.cost_usd == pytest.approx(((HELLO_PROMPT - 7) * 0.8 + 3 * 0.08 + 4 * 1.0 + 22 * 2.0) / 1e6)
    assert abs(lc_cost(usage, b) - second.cost_usd) < TOL


def test_chat_anthropic_tool_round_trip(provider):
    b = provider.configure(CLAUDE, answer_tokens=3)

    def lookup(query: str, limit: int) -> str:
        """Look something up."""
        return "found"

    llm = chat_anthropic(provider).bind_tools([lookup])
    question = HumanMessage("find it")
    call = llm.invoke([question])
    assert call.tool_calls[0]["name"] == "lookup" and call.tool_calls[0]["args"] == {"query": "x", "limit": 1}
    assert call.response_metadata["stop_reason"] == "tool_use"
    answer = llm.invoke([question, call, ToolMessage("found", tool_call_id=call.tool_calls[0]["id"])])
    assert answer.content == answer_text(3)
    assert abs(lc_cost(call.usage_metadata, b) + lc_cost(answer.usage_metadata, b) - provider.bill_usd) < TOL

    streamed = merged(llm.stream([question]))
    assert streamed.tool_calls[0]["args"] == {"query": "x", "limit": 1}
    assert streamed.usage_metadata["output_tokens"] == call.usage_metadata["output_tokens"]


@pytest.mark.parametrize("client, model", [(chat_openai, GPT), (chat_anthropic, CLAUDE)])
def test_tool_rounds_call_the_tools_in_turn_then_answer(provider, client, model):
    provider.configure(model, answer_tokens=3, tool_rounds=3)

    def first(a: int) -> str:
        """The first tool."""
        return "one"

    def second(b: int) -> str:
        """The second tool."""
        return "two"

    llm = client(provider).bind_tools([first, second])
    messages = [HumanMessage("go")]
    for expected in ("first", "second", "first"):
        call = llm.invoke(messages)
        assert [c["name"] for c in call.tool_calls] == [expected]
        messages += [call, ToolMessage("done", tool_call_id=call.tool_calls[0]["id"])]
    answer = llm.invoke(messages)
    assert answer.text == answer_text(3) and not answer.tool_calls
    # A new question starts the rounds again.
    assert llm.invoke([*messages, answer, HumanMessage("again")]).tool_calls[0]["name"] == "first"


def test_chat_anthropic_errors_and_missing_max_tokens(provider):
    provider.configure(CLAUDE, fail_status=500)
    with pytest.raises(anthropic.InternalServerError):
        chat_anthropic(provider).invoke("hello")
    provider.configure(CLAUDE, fail_status=400)
    with pytest.raises(anthropic.BadRequestError) as info:
        chat_anthropic(provider).invoke("hello")
    assert info.value.body["error"]["type"] == "invalid_request_error"
    provider.configure(CLAUDE, fail_status=529)
    with pytest.raises(anthropic.APIStatusError):
        chat_anthropic(provider).invoke("hello")
    provider.configure(CLAUDE)
    response = httpx.post(
        provider.anthropic_url + "/v1/messages", json={"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 400 and response.json()["type"] == "error"
    assert provider.bill_usd == 0.0


def test_anthropic_image_and_count_tokens(provider):
    data = base64.b64encode(png(1024, 1024)).decode()
    llm = chat_anthropic(provider)
    text_only = llm.invoke([HumanMessage(content=[{"type": "text", "text": "describe"}])]).usage_metadata[
        "input_tokens"
    ]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    with_image = llm.invoke([HumanMessage(content=[{"type": "text", "text": "describe"}, image])])
    assert with_image.usage_metadata["input_tokens"] == text_only + 1399
    assert llm.get_num_tokens_from_messages([HumanMessage("hello")]) == HELLO_PROMPT  # /v1/messages/count_tokens


# ----- the SDKs directly ---------------------------------------------------------------------------


def test_openai_legacy_completions(provider):
    b = provider.configure("davinci", answer_tokens=8, cache_read_tokens=1)
    client = openai.OpenAI(base_url=provider.openai_url, api_key="test", max_retries=0, timeout=5)
    done = client.completions.create(model="davinci", prompt="Once upon a time", max_tokens=3)
    assert done.choices[0].text == answer_text(3) and done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens == count_tokens("Once upon a time")
    chunks = list(
        client.completions.create(
            model="davinci", prompt="Once upon a time", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer_text(8)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 8
    reported = b.cost(done.usage.prompt_tokens, done.usage.completion_tokens, 1) + b.cost(
        usage.prompt_tokens, usage.completion_tokens, 1
    )
    assert abs(reported - provider.bill_usd) < TOL
    assert [r.api for r in provider.requests] == ["openai-completions"] * 2


# ----- LlamaIndex ----------------------------------------------------------------------------------


def test_llamaindex_openai_like_stream_usage(provider):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    b = provider.configure("m", answer_tokens=10)
    common = dict(
        api_base=provider.openai_url,
        api_key="test",
        model="m",
        is_chat_model=True,
        is_function_calling_model=True,
        max_retries=0,
        timeout=5,
    )
    messages = [ChatMessage(role="user", content="hello")]

    chunks = list(OpenAILike(**common).stream_chat(messages))
    assert chunks[-1].message.content == answer_text(10)
    assert all(c.raw.usage is None and c.additional_kwargs == {} for c in chunks)  # no usage at all
    assert "stream_options" not in provider.requests[-1].body and not provider.requests[-1].usage_reported

    llm = OpenAILike(**common, additional_kwargs={"stream_options": {"include_usage": True}})
    chunks = list(llm.stream_chat(messages))
    last = chunks[-1]
    # The usage arrives as an EXTRA final ChatResponse: raw has choices == [] and .usage; delta is "";
    # additional_kwargs carries {prompt,completion,total}_tokens; the message keeps the full text.
    assert last.raw.choices == [] and last.raw.usage.completion_tokens == 10 and last.delta == ""
    assert last.additional_kwargs == {
        "prompt_tokens": HELLO_PROMPT,
        "completion_tokens": 10,
        "total_tokens": HELLO_PROMPT + 10,
    }
    assert last.message.content == answer_text(10)
    assert chunks[-2].raw.choices[0].finish_reason == "stop" and chunks[-2].raw.usage is None
    assert provider.requests[-1].usage_reported

    reply = llm.chat(messages)  # stream_options is dropped for non-stream calls
    assert "stream_options" not in provider.requests[-1].body
    assert reply.additional_kwargs["completion_tokens"] == 10

    reported = sum(b.cost(r.prompt_tokens, r.completion_tokens) for r in provider.requests)
    assert abs(reported - provider.bill_usd) < TOL


def test_llamaindex_openai_cap_and_tools(provider):
    from llama_index.core.llms import ChatMessage
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai import OpenAI

    b = provider.configure(GPT, answer_tokens=12)
    llm = OpenAI(api_base=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=5, max_tokens=5)
    reply = llm.chat([ChatMessage(role="user", content="hello")])
    assert reply.message.content == answer_text(5)
    billed = provider.requests[-1]
    assert billed.cap_param == "max_tokens" and billed.body["temperature"] == 0.1  # LlamaIndex defaults
    assert reply.additional_kwargs == {
        "prompt_tokens": HELLO_PROMPT,
        "completion_tokens": 5,
        "total_tokens": HELLO_PROMPT + 5,
    }
    assert abs(b.cost(HELLO_PROMPT, 5) - provider.bill_usd) < TOL

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    response = OpenAI(
        api_base=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=5
    ).chat_with_tools([FunctionTool.from_defaults(add)], user_msg="1+1?")
    (selection,) = llm.get_tool_calls_from_response(response, error_on_no_tool_call=True)
    assert selection.tool_name == "add" and selection.tool_kwargs == {"a": 1, "b": 1}


def test_llamaindex_openai_errors(provider):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai import OpenAI

    provider.configure(GPT, fail_status=500)
    llm = OpenAI(api_base=provider.openai_url, api_key="test", model=GPT, max_retries=0, timeout=5)
    with pytest.raises(openai.InternalServerError):
        llm.chat([ChatMessage(role="user", content="hello")])


def test_concurrent_models_keep_separate_behaviours(provider):
    provider.configure("a", answer_tokens=2)
    provider.configure("b", answer_tokens=7)

    def ask(model: str) -> str:
        return chat_openai(provider, model=model).invoke("hello").content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["a", "b"] * 8))
    assert answers == [answer_text(2), answer_text(7)] * 8
    assert sorted({(r.model, r.completion_tokens) for r in provider.requests}) == [("a", 2), ("b", 7)]
