"""Token counting with tiktoken, cached encodings and an offline fallback chain."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Protocol

logger = logging.getLogger("omniroute")

__all__ = [
    "CHARS_PER_TOKEN",
    "TokenizerFallbackWarning",
    "get_tokenizer",
    "count_tokens",
    "count_tokens_batch",
    "count_message_tokens",
    "content_text",
]

#: Characters per token of the length-based estimate used when no tiktoken encoding can be
#: loaded. English text under cl100k_base averages about 4 characters per token.
CHARS_PER_TOKEN = 4.0

# OpenAI's chat format: every message costs a few tokens of framing, every reply is primed.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3

_FALLBACKS = {"o200k_harmony": "o200k_base", "o200k_base": "cl100k_base", "p50k_edit": "p50k_base"}

# These encodings' pre-tokenizers always start a new piece after a line break followed by a
# letter or digit, and BPE never merges across pieces: a text's count is the sum of its lines'
# counts there (tests/test_tokens.py checks both patterns). Repeated lines — few-shot examples,
# system prompts, chat history — are then encoded once. Other encodings (and the length
# estimate, whose rounding is not additive) count whole texts.
_LINE_BREAK = re.compile(r"\n(?=[A-Za-z0-9])")
_LINE_ADDITIVE = frozenset({"cl100k_base", "o200k_base"})
# Characters and lines remembered per encoding; past either the memo starts afresh. The line
# bound caps what many short lines cost in dict entries: at most about 30 MB per encoding
# (benchmarks/core.py measures it).
_MEMO_CHARS = 1 << 22
_MEMO_LINES = 1 << 17


class TokenizerFallbackWarning(UserWarning):
    """An encoding could not be loaded and a fallback is counting tokens instead."""


class Tokenizer(Protocol):
    """What token counting needs from an encoding."""

    name: str

    def encode_ordinary(self, text: str) -> list[int]: ...



class _LengthEstimate:
    """Counts ceil(len(text) / CHARS_PER_TOKEN): the last resort when tiktoken has no file."""

    name = "estimate"

    def encode_ordinary(self, text: str) -> list[int]:
        return [0] * math.ceil(len(text) / CHARS_PER_TOKEN)


_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def _warn_once(wanted: str, used: str, error: BaseException) -> None:
    with _warn_lock:
        if (wanted, used) in _warned:
            return
        _warned.add((wanted, used))
    warnings.warn(
        f"tiktoken encoding {wanted!r} could not be loaded ({type(error).__name__}: {error}); "
        f"counting tokens with {used!r} instead. Set TIKTOKEN_CACHE_DIR to a folder holding the "
        "encoding to count exactly offline.",
        TokenizerFallbackWarning,
        stacklevel=3,
    )


def _resolve_name(encoding_or_model: str) -> str:
    import tiktoken

    if encoding_or_model in tiktoken.list_encoding_names():
        return encoding_or_model
    try:
        return tiktoken.encoding_name_for_model(encoding_or_model)
    except KeyError:
        # Unknown model names (claude-*, llama-*) are counted with the common cl100k_base.
        return "cl100k_base"


@cache
def get_tokenizer(encoding_or_model: str = "cl100k_base") -> Tokenizer:
    """The tokenizer for an encoding or model name, falling back o200k→cl100k→estimate offline."""
    if not isinstance(encoding_or_model, str) or not encoding_or_model:
        raise ValueError(f"encoding_or_model must be a non-empty string, got {encoding_or_model!r}")
    import tiktoken

    name = _resolve_name(encoding_or_model)
    tried = name
    while True:
        try:
            return tiktoken.get_encoding(name)
        except Exception as error:  # network, missing cache file, corrupt file
            fallback = _FALLBACKS.get(name, "cl100k_base" if name != "cl100k_base" else None)
            if fallback is None:
                _warn_once(tried, "estimate", error)
                return _LengthEstimate()
            _warn_once(name, fallback, error)
            name = fallback


# Texts lately cut into lines: a request is counted once per encoding its candidates use, each
# count cutting the same texts. A few dozen entries cover a request's messages; the dict is
# replaced whole when full, so threads never see it half-cleared. Texts over _CUT_CHARS are cut
# afresh each time, so that what it keeps stays under _CUTS × _CUT_CHARS characters.
_cuts: dict[str, list[str]] = {}
_CUTS = 32
_CUT_CHARS = 1 << 16


def _lines(text: str) -> list[str]:
    """`text` cut after each line break that a letter or digit follows (pieces keep their "\n"; do not modify)."""
    global _cuts
    if "\n" not in text:
        return [text]
    pieces = _cuts.get(text)
    if pieces is not None:
        return pieces
    if "\0" in text:
        pieces, start = [], 0
        for match in _LINE_BREAK.finditer(text):
            pieces.append(text[start:match.end()])
            start = match.end()
        pieces.append(text[start:])
    else:  # one substitution and one split in C: 1.4× faster than the loop above
        pieces = _LINE_BREAK.sub("\n\0", text).split("\0")
    if len(text) <= _CUT_CHARS:
        if len(_cuts) >= _CUTS:
            _cuts = {}
        _cuts[text] = pieces
    return pieces


class _LineMemo:
    """Counts a text as the sum of its lines' counts, remembering each line's count."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._encode = tokenizer.encode_ordinary
        self._counts: dict[str, int] = {}
        self._chars = 0

    def __call__(self, text: str) -> int:
        counts, total = self._counts, 0
        for line in _lines(text):
            n = counts.get(line)
            if n is None:
                n = len(self._encode(line))
                if self._chars > _MEMO_CHARS or len(counts) >= _MEMO_LINES:
                    # Threads racing here only make the bound approximate; a dict is safe to share.
                    counts = self._counts = {}
                    self._chars = 0
                counts[line] = n
                self._chars += len(line)
            total += n
        return total


@cache
def _counter(encoding_or_model: str) -> Callable[[str], int]:
    """text → token count for an encoding or model name (one per name, shared by all callers)."""
    tokenizer = get_tokenizer(encoding_or_model)
    if tokenizer.name in _LINE_ADDITIVE:
        return _LineMemo(tokenizer)
    encode = tokenizer.encode_ordinary
    return lambda text: len(encode(text))


def count_tokens(text: str, encoding_or_model: str = "cl100k_base") -> int:
    """Number of tokens of `text` under an encoding or model name (special tokens as text)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return _counter(encoding_or_model)(text)


def count_tokens_batch(texts: Sequence[str], encoding_or_model: str = "cl100k_base") -> list[int]:
    """Token counts of many texts with one cached encoding.

    A plain loop: tiktoken's threaded batch call measured slower on 2 cores (benchmarks/core.py).
    """
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    count = _counter(encoding_or_model)
    return [count(t) for t in texts]


def content_text(content: Any) -> str:
    """Text of a message content: a string, or a list of content blocks (text parts only).

    Text parts are strings and blocks with a string "text" field. Image, audio, file and tool
    blocks are left out (no base64 reaches the embedder); count_message_tokens prices them.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "\n".join(parts)
    return str(content)


def count_message_tokens(
    messages: Sequence[Mapping[str, Any]],
    encoding_or_model: str = "cl100k_base",
    tools: Sequence[Mapping[str, Any]] | None = None,
    image_rule: str | None = None,
) -> int:
    """Prompt tokens of chat messages ({"role", "content", optional "name"}) plus tool schemas.

    List contents count their text parts as text (content_text) plus every other block —
    images, audio, files, tool blocks — by shared_core.media.block_tokens (images by the
    provider's pixel rule, not by the length of their base64: `image_rule` "openai" or
    "anthropic", the API the candidate speaks; None = the rule each block's shape implies).
    """
    count = _counter(encoding_or_model)
    texts: list[str] = []
    total = _REPLY_PRIMING
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise TypeError(f"messages[{i}] must be a mapping with a 'role', got {message!r}")
        total += _TOKENS_PER_MESSAGE
        texts.append(str(message["role"]))
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            content, media_tokens = _media_tokens(content, count, image_rule)
            total += media_tokens
        texts.append(content_text(content))
        if message.get("name"):
            total += _TOKENS_PER_NAME
            texts.append(str(message["name"]))
        if message.get("tool_calls"):
            texts.append(_wire_tool_calls(message["tool_calls"]))
        if message.get("tool_call_id"):
            texts.append(str(message["tool_call_id"]))
    for schema in tools or ():
        texts.append(json.dumps(schema, separators=(",", ":"), sort_keys=True, default=str))
    return total + sum(map(count, texts))


def _wire_tool_calls(calls: Any) -> str:
    """Tool calls as the provider receives them back in the prompt — OpenAI's wire form, with each
    call's id and its arguments as a JSON string — whatever shape the framework keeps them in
    ({"name", "args" | "arguments", "id"}). Counting only name and arguments fell about 28
    tokens short per call, and the worst case reserved with it."""
    if not isinstance(calls, (list, tuple)):
        return json.dumps(calls, separators=(",", ":"), default=str)
    wire = []
    for call in calls:
        if not isinstance(call, Mapping) or "function" in call:  # already the wire form, or unknown
            wire.append(call)
            continue
        arguments = call.get("args", call.get("arguments"))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, separators=(",", ":"), default=str)
        wire.append({"id": str(call.get("id") or ""), "type": "function",
                     "function": {"name": str(call.get("name", "")), "arguments": arguments}})
    return json.dumps(wire, separators=(",", ":"), default=str)


def _media_tokens(content: Any, count: Callable[[str], int], image_rule: str | None) -> tuple[Any, int]:
    """(content, tokens of its non-text blocks); a one-shot iterable comes back as a list."""
    if not isinstance(content, (list, tuple)):
        if isinstance(content, (Mapping, bytes, bytearray)) or not isinstance(content, Iterable):
            return content, 0
        content = list(content)
    total = 0
    for block in content:
        # Text blocks (a string "text" field) are content_text's; media prices all others.
        if isinstance(block, Mapping) and not isinstance(block.get("text"), str):
            from .media import block_tokens  # only messages with such blocks need the module

            try:
                total += block_tokens(block, count, image_rule) or 0
            except (TypeError, ValueError, RecursionError) as error:
                # A malformed block must not stop the request: it counts as the largest image,
                # more than most blocks cost, and the provider's own count settles the call.
                from .media import OPENAI_MAX_IMAGE_TOKENS

                logger.warning("could not count a %r content block (%s); counting %d tokens for it",
                               type(block.get("type")).__name__, error, OPENAI_MAX_IMAGE_TOKENS)
                total += OPENAI_MAX_IMAGE_TOKENS
    return content, total
