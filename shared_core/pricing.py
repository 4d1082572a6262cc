"""What a call costs: one `Usage` value for every provider's token report, and one rule that prices it.

Every money figure in OmniRoute — the router's estimate, the worst case it reserves, the cost it
commits, a dataset's cost column, the prices learned from recorded costs — goes through
`price_tokens` (or `price`, which adds the prompt-cache terms to it).

Prices are US dollars per million tokens. Token conventions follow the providers' bills (and
langchain-core's `usage_metadata`, OpenAI's `usage`, genai-prices' `Usage`): `input_tokens` is the
whole prompt, cached parts included; `output_tokens` is the whole output, reasoning included. The
detail fields are parts of those totals, so reasoning is charged once, as output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

if TYPE_CHECKING:
    from .candidates import Candidate

__all__ = ["MAX_REPORTED_TOKENS", "Reported", "Usage", "price", "price_tokens", "usage_from_report"]

logger = logging.getLogger("omniroute")

Tokens = TypeVar("Tokens", float, np.ndarray)


def price_tokens(input_tokens: Tokens, output_tokens: Tokens, input_price: Any, output_price: Any) -> Tokens:
    """USD for these tokens at these prices (USD per 1M tokens); scalars or broadcastable arrays."""
    return (input_tokens * input_price + output_tokens * output_price) / 1e6


@dataclass(frozen=True)
class Usage:
    """The tokens of one call, as its provider reports them (all counts ≥ 0, integers).

    `input_tokens` is the whole prompt; `cache_read_tokens` (served from the provider's prompt
    cache) and `cache_write_tokens` (written to it) are parts of it. `output_tokens` is the whole
    output; `reasoning_tokens` and `output_audio_tokens` are parts of it, `input_audio_tokens` part
    of the input — recorded, priced at the text rates. Raises ValueError when a part exceeds its
    total or a count is negative.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"Usage.{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError(
                f"cache tokens ({self.cache_read_tokens} read + {self.cache_write_tokens} written) exceed "
                f"the {self.input_tokens} input tokens they are part of"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(f"reasoning_tokens {self.reasoning_tokens} exceed output_tokens {self.output_tokens}")

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens billed at the plain input price."""
        return self.input_tokens - self.cache_read_tokens - self.cache_write_tokens

    def to_dict(self) -> dict[str, int]:
        """The non-zero counts, input and output always, as a JSON-able dict."""
        return {k: v for k, v in self.__dict__.items() if v or k in ("input_tokens", "output_tokens")}


def price(candidate: Candidate, usage: Usage) -> float:
    """USD for `usage` on `candidate`: uncached input, cache reads and writes, and output at its
    prices, plus its per-request fee (`request_price`)."""
    read = candidate.input_price if candidate.cache_read_price is None else candidate.cache_read_price
    write = candidate.input_price if candidate.cache_write_price is None else candidate.cache_write_price
    cached = usage.cache_read_tokens * read + usage.cache_write_tokens * write
    return float(price_tokens(usage.uncached_input_tokens, usage.output_tokens, candidate.input_price,
                              candidate.output_price) + cached / 1e6) + candidate.request_price


#: The most tokens one call is believed to report; a larger (or negative, NaN, infinite) count is
#: a provider's garbage, read as missing so that OmniRoute counts the call itself.
MAX_REPORTED_TOKENS = 10**9


def _count(report: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = report.get(key)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            if math.isfinite(value) and 0 <= value <= MAX_REPORTED_TOKENS:
                return int(value)
            logger.warning("usage report has %s=%r; reading it as missing", key, value)
            return None
    return None


def _as_mapping(value: Any) -> Mapping[str, Any]:
    """A report (or its details) as a mapping: a dict, or a provider SDK object's model_dump(); {} otherwise."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if not callable(dump):
        return {}
    try:
        dumped = dump()
    except Exception as error:  # a paid call must still be settled: read what can be read
        logger.warning("usage report %s could not be read (%s); counting the call instead", type(value).__name__, error)
        return {}
    return dumped if isinstance(dumped, Mapping) else {}


def _details(report: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    # Provider SDK objects (openai's CompletionUsage details) expose attributes, not keys.
    return _as_mapping(report.get(key))


class Reported(NamedTuple):
    """A provider's token report read into a Usage; which totals it actually gave."""

    usage: Usage
    has_input: bool
    has_output: bool


def usage_from_report(report: Any) -> Reported | None:
    """The Usage in a provider's token report (None when it reports neither input nor output).

    Reads, whatever the key style:
    - LangChain `usage_metadata`: input_tokens / output_tokens (totals), `input_token_details`
      (cache_read, cache_creation, audio) and `output_token_details` (reasoning, audio);
    - OpenAI `usage`: prompt_tokens / completion_tokens (totals), `prompt_tokens_details`
      (cached_tokens, audio_tokens) and `completion_tokens_details` (reasoning_tokens, audio_tokens);
    - Anthropic `usage`: input_tokens *beside* cache_read_input_tokens and
      cache_creation_input_tokens (Anthropic's input_tokens excludes them; they are added here).
    A missing total reads as 0 with `has_input` / `has_output` False, for the caller to count; so
    does a count that is negative, NaN, infinite or above MAX_REPORTED_TOKENS (with a warning),
    and a report that cannot be read at all gives None: after the model answered, nothing here
    raises.
    Parts larger than their totals (a provider's inconsistency) are clamped with a warning rather
    than losing the call's cost.
    """
    if report is None:
        return None
    report = _as_mapping(report)
    inp = _count(report, "input_tokens", "prompt_tokens")
    out = _count(report, "output_tokens", "completion_tokens")
    if inp is None and out is None:
        return None
    has_input, has_output = inp is not None, out is not None
    inp_d = {**_details(report, "prompt_tokens_details"), **_details(report, "input_token_details")}
    out_d = {**_details(report, "completion_tokens_details"), **_details(report, "output_token_details")}
    read = _count(report, "cache_read_input_tokens")
    write = _count(report, "cache_creation_input_tokens")
    anthropic = read is not None or write is not None
    if anthropic:
        read, write = read or 0, write or 0
        inp = (inp or 0) + read + write
    else:
        read = _count(inp_d, "cache_read", "cached_tokens") or 0
        write = _count(inp_d, "cache_creation") or 0
    inp, out = inp or 0, out or 0
    reasoning = _count(out_d, "reasoning", "reasoning_tokens") or 0
    if read + write > inp or reasoning > out:
        logger.warning(
            "usage report is inconsistent (cache %d + %d of %d input, reasoning %d of %d output); "
            "counting the totals, parts clamped", read, write, inp, reasoning, out,
        )
        read = min(read, inp)
        write = min(write, inp - read)
        reasoning = min(reasoning, out)
    usage = Usage(
        input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write,
        reasoning_tokens=reasoning,
        input_audio_tokens=min(_count(inp_d, "audio", "audio_tokens") or 0, inp),
        output_audio_tokens=min(_count(out_d, "audio", "audio_tokens") or 0, out),
    )
    return Reported(usage, has_input, has_output)
