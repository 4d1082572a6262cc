"""Token counting: exact against tiktoken, fast paths agree, and offline fallbacks warn once."""

from __future__ import annotations

import re
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    tokens._counter.cache_clear()
    tokens._warned.clear()
    yield
    get_tokenizer.cache_clear()
    tokens._counter.cache_clear()
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


# --- Counting line by line (the memo) -------------------------------------------------------

# Texts made of fragments that exercise the pre-tokenizers: line breaks of every kind, spaces
# before them, contractions, digit runs, punctuation, marks and letters outside ASCII.
_LINES = st.lists(
    st.sampled_from(list("aZ09 _.,:;!?/'\"-\t\n\r\x0b\x0c\x00\u2028\u00a0éİΩ中\u0301😀")
                    + ["\n\n", "'s", "'LL", " 123", "1234", "\r\n", " \n", "word", "Word", " /path"]),
    max_size=40,
).map("".join)


def _pattern(name):
    """The pre-tokenizer pattern of a tiktoken encoding, without loading its (network) ranks file."""
    import tiktoken_ext.openai_public as openai_public

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *args, **kwargs: {}
    try:
        return getattr(openai_public, name)()["pat_str"]
    finally:
        openai_public.load_tiktoken_bpe = original


def test_counting_line_by_line_is_exact_on_both_datasets(routerbench, llmrouter):
    import tiktoken

    encode = tiktoken.get_encoding("cl100k_base").encode_ordinary
    for data in (routerbench, llmrouter):
        prompts = list(data.prompts)
        expected = [len(encode(p)) for p in prompts]
        assert count_tokens_batch(prompts) == expected
        assert count_tokens_batch(prompts) == expected  # again, from remembered lines


@settings(max_examples=300, deadline=None)
@given(text=_LINES)
def test_counting_line_by_line_is_exact_on_any_text(text):
    import tiktoken

    assert count_tokens(text) == len(tiktoken.get_encoding("cl100k_base").encode_ordinary(text))
    assert count_tokens(text + "\nA line after it") == count_tokens(text + "\n") + count_tokens("A line after it")


@settings(max_examples=300, deadline=None)
@given(text=_LINES)
def test_a_text_is_cut_into_lines_after_each_break_a_letter_or_digit_follows(text):
    expected, start = [], 0  # the rule, one match at a time
    for match in re.finditer(r"\n(?=[A-Za-z0-9])", text):
        expected.append(text[start:match.end()])
        start = match.end()
    expected.append(text[start:])
    assert tokens._lines(text) == expected
    assert tokens._lines(text) == expected  # again, from the texts lately cut


@pytest.mark.parametrize("encoding", sorted(tokens._LINE_ADDITIVE))
@settings(max_examples=300, deadline=None)
@given(text=_LINES)
def test_the_pre_tokenizer_never_joins_a_line_break_to_the_letter_after_it(encoding, text):
    """What makes counting line by line exact, checked on each encoding's own pattern."""
    import regex

    pattern = regex.compile(_pattern(encoding))
    lines = tokens._lines(text)
    assert "".join(lines) == text
    assert pattern.findall(text) == [piece for line in lines for piece in pattern.findall(line)]


def test_the_pattern_stands_for_tiktokens_own_pre_tokenizer(routerbench):
    """The regex module splits cl100k_base text into the pieces tiktoken's BPE sees."""
    import regex
    import tiktoken

    encode = tiktoken.get_encoding("cl100k_base").encode_ordinary
    pattern = regex.compile(_pattern("cl100k_base"))
    for prompt in routerbench.prompts[:200]:
        assert sum(len(encode(piece)) for piece in pattern.findall(prompt)) == len(encode(prompt))


def test_the_length_estimate_counts_whole_texts(fresh_tokenizers, monkeypatch):
    import tiktoken

    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: (_ for _ in ()).throw(ConnectionError("offline")))
    text = "ab\nCd\nEf\nGh"  # line by line the rounding would give 4 tokens, not 3
    with pytest.warns(TokenizerFallbackWarning):
        assert count_tokens(text) == -(-len(text) // int(CHARS_PER_TOKEN)) == 3


def test_the_memo_of_lines_stays_bounded(monkeypatch):
    import tiktoken

    encode = tiktoken.get_encoding("cl100k_base").encode_ordinary
    memo = tokens._LineMemo(tiktoken.get_encoding("cl100k_base"))
    monkeypatch.setattr(tokens, "_MEMO_CHARS", 1_000)
    texts = [f"line {i} of a long log\nSecond line {i}" for i in range(500)]
    assert [memo(t) for t in texts] == [len(encode(t)) for t in texts]
    assert sum(map(len, memo._counts)) <= 1_000 + 40


def test_only_texts_of_a_bounded_size_are_kept_cut():
    small, large = "a\nB" * 10, "a\nB" * (tokens._CUT_CHARS // 3 + 1)  # a pasted log: 20,000 short lines
    assert tokens._lines(small) == tokens._lines(small) and small in tokens._cuts
    assert len(tokens._lines(large)) == large.count("\n") + 1
    assert large not in tokens._cuts  # what the cache keeps stays under _CUTS × _CUT_CHARS characters
