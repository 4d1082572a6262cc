"""Token counting: exact against tiktoken, fast paths agree, and offline fallbacks warn once."""

from __future__ import annotations

import warnings

import pytest

from shared_core import tokens
from shared_core.tokens import (
    CHARS_PER_TOKEN,
    TokenizerFallbackWarning,
    count_message_tokens,
    count_tokens,
    count_tokens_batch,
    get_tokenizer,
)


@pytest.fixture
def fresh_tokenizers():
    """Forget cached encodings and warnings so a test sees the loading path again."""
    get_tokenizer.cache_clear()
    tokens._warned.clear()
    yield
    get_tokenizer.cache_clear()
    tokens._warned.clear()


def test_counts_match_tiktoken_cl100k():
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    text = "Route every request to the model with the most quality for the money. <|endoftext|>"
    assert count_tokens(text) == len(enc.encode_ordinary(text))
    assert count_tokens("") == 0


def test_model_names_resolve_to_their_encoding():
    assert get_tokenizer("gpt-4").name == "cl100k_base"
    # Unknown vendors are counted with cl100k_base rather than failing.
    assert get_tokenizer("claude-v2").name == "cl100k_base"


def test_batch_agrees_with_single_counts():
    texts = [f"prompt number {i} " * (i % 7 + 1) for i in range(200)]
    assert count_tokens_batch(texts) == [count_tokens(t) for t in texts]


def test_message_tokens_include_framing_and_tool_schemas():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    plain = count_message_tokens(messages)
    body = sum(count_tokens(m["role"]) + count_tokens(m["content"]) for m in messages)
    assert plain == body + 3 * len(messages) + 3
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    assert count_message_tokens(messages, tools=[tool]) > plain + 10


def test_content_blocks_count_their_text():
    blocks = [{"role": "user", "content": [{"type": "text", "text": "hello world"}, {"type": "image_url"}]}]
    assert count_message_tokens(blocks) == count_message_tokens([{"role": "user", "content": "hello world"}])


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_non_text_is_rejected(bad):
    with pytest.raises(TypeError):
        count_tokens(bad)


def test_malformed_messages_are_rejected():
    with pytest.raises(TypeError, match="role"):
        count_message_tokens([{"content": "no role"}])


def test_o200k_without_cache_falls_back_to_cl100k_and_warns_once(fresh_tokenizers):
    # The shared cache holds only cl100k_base; loading o200k_base would need the network,
    # which the test run blocks, so it must fall back.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = count_tokens("hello world", "o200k_base")
        count_tokens("hello again", "o200k_base")
        count_tokens("and again", "gpt-4o")
    assert n == count_tokens("hello world", "cl100k_base")
    fallback = [w for w in caught if issubclass(w.category, TokenizerFallbackWarning)]
    assert len(fallback) == 1
    assert "o200k_base" in str(fallback[0].message) and "cl100k_base" in str(fallback[0].message)


def test_no_encoding_at_all_falls_back_to_length_estimate(fresh_tokenizers, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.warns(TokenizerFallbackWarning, match="estimate"):
        n = count_tokens("x" * 41)
    assert n == 11 == -(-41 // int(CHARS_PER_TOKEN))
    assert count_message_tokens([{"role": "user", "content": "abcd"}]) > 0
