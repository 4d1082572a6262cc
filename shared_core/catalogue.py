"""What the catalogue knows about a model (prices, context window, from genai-prices), made a Candidate.

genai-prices (pydantic's maintained price database, https://github.com/pydantic/genai-prices) is
read from the snapshot bundled with the installed package: nothing here fetches price updates. To
use fresher prices, start genai-prices' own `UpdatePrices` (it fetches in the background): the
candidates built once it has fetched carry them.

A Candidate holds one price per token kind, so tiered prices (a dearer rate for every token once
a prompt passes a threshold) are read at their base tier and the candidate's context window is
cut to the threshold, where the base prices are the bill; a context window stated explicitly
above it keeps the base prices, with a warning that larger prompts cost more than OmniRoute counts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .candidates import Candidate

__all__ = ["Declared", "Entry", "candidate_from_model", "describe", "lookup"]

logger = logging.getLogger("omniroute")

# LangChain's init_chat_model spelling; a prefix with a dot (a Bedrock id "anthropic.claude-...:0")
# or a slash is part of the model name, not a provider.
_PROVIDER_PREFIX = re.compile(r"(?P<provider>[A-Za-z][\w-]*):(?P<model>.+)")
# The catalogue's token prices a Candidate can hold (USD per 1M tokens); cache writes at the default
# (5-minute) lifetime. Audio, image and 1-hour cache-write prices have no Candidate field.
_TOKEN_PRICES = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")


@dataclass(frozen=True)
class Declared:
    """What a framework model says about itself (None = it does not say)."""

    name: str | None
    provider_ref: str | None = None  # the provider as its integration names it: "openai", "azure", "google_genai"
    api_url: str | None = None  # where its client sends requests
    provider: str | None = None  # the API its client speaks (Candidate.provider)
    context_window: int | None = None
    max_output_tokens: int | None = None  # the model's own output limit
    client_cap: int | None = None  # the output cap its client was configured with (max_tokens=)
    supports_tools: bool | None = None
    supports_structured_output: bool | None = None


@dataclass(frozen=True)
class Entry:
    """A model in genai-prices: prices in USD per 1M tokens (base tier), `request_price` in USD per request."""

    provider_id: str
    model_id: str
    input_price: float | None
    output_price: float | None
    cache_read_price: float | None
    cache_write_price: float | None
    request_price: float
    context_window: int | None
    tier_start: int | None  # input tokens above which a dearer tier is billed (None: no tiers)


def _base(price: Any) -> float | None:
    if price is None:
        return None
    return float(getattr(price, "base", price))  # TieredPrices carries its first tier as .base


def lookup(name: str, *, provider_ref: str | None = None, api_url: str | None = None) -> Entry | None:
    """The model's genai-prices entry, found by its API URL, else its provider, else (neither known) its name
    alone; None when the catalogue does not know it. ImportError without genai-prices."""
    import genai_prices

    # A provider the catalogue lacks ("ollama") must not borrow another's price. A URL it does not
    # know (a proxy, a local gateway) says nothing: the integration's provider prices it.
    attempts: list[dict[str, str]] = [{"provider_api_url": api_url}] if api_url else []
    attempts += [{"provider_id": provider_ref}] if provider_ref else []
    for where in attempts or [{}]:
        try:
            # Pricing no usage finds the model and today's standard prices through the public API.
            # `where` holds one of the two keyword-only overloads' arguments; mypy cannot see which through **.
            found = genai_prices.calc_price(genai_prices.Usage(), name, **where)  # type: ignore[call-overload]
        except LookupError:
            continue
        prices = found.model_price
        keyed = _dearest_today(found.model, {key: getattr(prices, key) for key in _TOKEN_PRICES})
        starts = [tier.start for price in keyed.values() for tier in getattr(price, "tiers", ())]
        entry = Entry(
            provider_id=found.provider.id,
            model_id=found.model.id,
            input_price=_base(keyed["input_mtok"]),
            output_price=_base(keyed["output_mtok"]),
            cache_read_price=_base(keyed["cache_read_mtok"]),
            cache_write_price=_base(keyed["cache_write_mtok"]),
            request_price=(_base(prices.requests_kcount) or 0.0) / 1000,  # catalogue: USD per 1,000 requests
            context_window=found.model.context_window,
            tier_start=min(starts, default=None),
        )
        logger.info("genai-prices: %r priced as %s/%s", name, entry.provider_id, entry.model_id)
        return entry
    return None


def _dearest_today(model: Any, keyed: dict[str, Any]) -> dict[str, Any]:
    """Each token price at its dearest over the next day. Some prices change with the time of day
    (DeepSeek's off-peak half price) or from a date: a Candidate holds one price, and one read at
    the hour it was built would undercount every call made at a dearer hour."""
    now = datetime.now(timezone.utc)
    dearest = dict(keyed)
    for step in range(48):  # every half hour: the catalogue's daily windows start on the half hour
        prices = model.get_prices(now + timedelta(minutes=30 * step))
        for key in _TOKEN_PRICES:
            price = getattr(prices, key)
            if price is not None and (dearest[key] is None or _base(price) > _base(dearest[key])):  # type: ignore[operator]
                dearest[key] = price
    if dearest != keyed:
        logger.info("genai-prices: %s's prices change with the time of day; the dearest are used, so budgets hold",
                    getattr(model, "id", model))
    return dearest


def describe(model: Any) -> Declared:
    """What `model` declares: a LangChain chat model, a LlamaIndex LLM, or a "provider:model" / model name
    string. TypeError for anything else."""
    if isinstance(model, str):
        match = _PROVIDER_PREFIX.fullmatch(model)
        # Only a provider's name is a prefix: "qwen2:7b" (an Ollama tag) and "ft:gpt-4o-mini:org::id" (a
        # fine-tune) are model names with a colon in them.
        if match and match["provider"].lower() in _known_providers():
            return Declared(name=match["model"], provider_ref=match["provider"], provider=match["provider"])
        return Declared(name=model)
    # Each adapter owns how its framework's models describe themselves; imported only when needed.
    for cls in type(model).__mro__:
        if cls.__module__.startswith("langchain_core."):
            from omniroute_lc.limits import declared as declared_lc

            return declared_lc(model)
        if cls.__module__.startswith("llama_index.core."):
            from omniroute_li.limits import declared as declared_li

            return declared_li(model)
    raise TypeError(
        f"Candidate.from_model takes a LangChain chat model, a LlamaIndex LLM or a 'provider:model' string, "
        f"got {type(model).__name__}"
    )


#: LangChain's `init_chat_model` provider names (genai-prices' own ids are added when it is installed).
_LANGCHAIN_PROVIDERS = frozenset({
    "openai", "anthropic", "azure_openai", "azure_ai", "google_vertexai", "google_genai", "google_anthropic_vertex",
    "bedrock", "bedrock_converse", "cohere", "fireworks", "together", "mistralai", "huggingface", "groq", "ollama",
    "deepseek", "ibm", "nvidia", "xai", "perplexity",
})


def _known_providers() -> frozenset[str]:
    try:
        from genai_prices.data import providers
    except ImportError:
        return _LANGCHAIN_PROVIDERS
    return _LANGCHAIN_PROVIDERS | {p.id.lower() for p in providers}


def _unknown(declared: Declared, why: str) -> ValueError:
    where = f" (provider {declared.provider_ref!r})" if declared.provider_ref else ""
    return ValueError(
        f"{why} {declared.name!r}{where}: pass its prices, Candidate.from_model(model, input_price=..., "
        "output_price=...) in USD per 1M tokens (and cache_read_price=, cache_write_price= if it caches prompts)"
    )


def _catalogued(declared: Declared, priced: bool) -> Entry | None:
    """The model's entry; None when it is not needed (prices given) and cannot be had. Raises otherwise."""
    if not declared.name:
        return None
    try:
        entry = lookup(declared.name, provider_ref=declared.provider_ref, api_url=declared.api_url)
    except ImportError:
        if priced:
            return None
        raise ImportError(
            "Candidate.from_model reads prices from genai-prices: pip install 'omniroute[prices]', "
            "or pass input_price=..., output_price=... (USD per 1M tokens)"
        ) from None
    if not priced and entry is None:
        raise _unknown(declared, "genai-prices does not know the model")
    if not priced and entry is not None and (entry.input_price is None or entry.output_price is None):
        raise _unknown(declared, "genai-prices has no per-token input and output prices for")
    return entry


def _window(entry: Entry, window: int | None, overrides: dict[str, Any]) -> int | None:
    """The context window within which the base-tier prices are the bill (see the module docstring)."""
    if entry.tier_start is None:
        return window
    stated = overrides.get("context_window")
    if stated is None:
        # A model billed by tiers takes prompts at least as long as its dearer tier's start.
        return entry.tier_start if window is None else min(window, entry.tier_start)
    # A stated value of the wrong type is left to the Candidate's validation, which names the field.
    if isinstance(stated, (int, float)) and not isinstance(stated, bool) and stated > entry.tier_start:
        logger.warning(
            "%s: %s/%s bills prompts above %d input tokens at a dearer tier than the base prices OmniRoute "
            "charges; with context_window=%d such calls cost more than it counts",
            overrides.get("name", entry.model_id), entry.provider_id, entry.model_id, entry.tier_start, stated,
        )
    return window


def _encoding(name: str | None) -> str | None:
    """tiktoken's encoding for an OpenAI model name (gpt-4o: o200k_base); None for others (the default)."""
    if not name:
        return None
    from tiktoken.model import encoding_name_for_model  # a table lookup: nothing is downloaded

    try:
        return encoding_name_for_model(name)
    except KeyError:
        return None


def candidate_from_model(model: Any, **overrides: Any) -> Candidate:
    """A Candidate for `model` (see Candidate.from_model); ValueError when its name or prices are unknown."""
    declared = describe(model)
    priced = all(overrides.get(key) is not None for key in ("input_price", "output_price"))
    if not declared.name and not (priced and "name" in overrides):
        raise ValueError(
            f"cannot tell which model {type(model).__name__} is: pass name=..., input_price=..., output_price=... "
            "(USD per 1M tokens)"
        )
    entry = _catalogued(declared, priced)
    fields: dict[str, Any] = {
        "name": declared.name,
        "model": None if isinstance(model, str) else model,
        "encoding": _encoding(declared.name),
    }
    if entry is not None:
        fields.update(
            input_price=entry.input_price, output_price=entry.output_price, cache_read_price=entry.cache_read_price,
            cache_write_price=entry.cache_write_price, request_price=entry.request_price,
            # Where the two disagree the smaller wins: a window too large sends prompts the provider refuses.
            context_window=_window(entry, min(filter(None, (entry.context_window, declared.context_window)),
                                              default=None), overrides),
        )
    # None = said by neither: the Candidate's default.
    candidate = Candidate(**{**{k: v for k, v in fields.items() if v is not None}, **overrides})
    # What the client itself can do is read, not stated (Candidate.derived): a saved router loaded
    # with another client reads that one's afresh. The catalogue's window and prices are stated.
    candidate = candidate.derived(**{k: v for k, v in (("supports_tools", declared.supports_tools),
                                                        ("supports_structured_output",
                                                         declared.supports_structured_output))
                                     if v is not None and k not in overrides})
    # The model's own limits by the rule the adapters apply when they bind it (Candidate.with_limits).
    return candidate.with_limits(
        context_window=declared.context_window,
        max_output_tokens=declared.max_output_tokens,
        provider=declared.provider,
        client_cap=declared.client_cap,
    )
