"""Candidate models: a name, prices, limits, capabilities and the framework object to call."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .pricing import price_tokens

__all__ = ["CLIENT_FIELDS", "Candidate", "validate_candidates"]


class Candidate(BaseModel):
    """One model the router may choose; prices are US dollars per million tokens."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    name: str = Field(description="Unique name; matches the model's column in a routing dataset.")
    input_price: float = Field(description="USD per 1M input (prompt) tokens.")
    output_price: float = Field(description="USD per 1M output (completion) tokens.")
    cache_read_price: float | None = Field(
        None, description="USD per 1M input tokens read from the provider's prompt cache; None = input_price."
    )
    cache_write_price: float | None = Field(
        None, description="USD per 1M input tokens written to the provider's prompt cache; None = input_price."
    )
    request_price: float = Field(
        0.0, description="USD per request on top of its tokens (a per-call fee; 0 for most token-priced APIs)."
    )
    context_window: int = Field(
        128_000, description="Most tokens of prompt + output accepted (read from the framework model when unset)."
    )
    max_output_tokens: int = Field(
        4096, description="Most output tokens per call: reserved as the worst case and sent as the cap."
    )
    encoding: str = Field("cl100k_base", description="tiktoken encoding or model name for counting.")
    provider: str | None = Field(
        None,
        description="The API its client speaks ('openai', 'anthropic', ...): whose image token rule applies; "
        "read from the framework model when unset.",
    )
    supports_tools: bool = Field(
        True, description="Can serve requests that carry tool schemas (read from the framework model when unset)."
    )
    supports_structured_output: bool = Field(
        True, description="Can serve structured-output requests (read from the framework model when unset)."
    )
    accepts_output_cap: bool = Field(
        True, description="Each call can be sent its own output cap (False: a client with no max_tokens setting; "
                          "its worst case is then always its full max_output_tokens, and no cap is lowered)."
    )
    prior_quality: float | None = Field(None, description="Expected quality in [0, 1] without data.")
    model: Any = Field(None, exclude=True, description="The framework model; the core never calls it.")

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("candidate name must be a non-empty string")
        if not v.isprintable():
            # It is written to ledgers, logs and spans: a control character (NUL) breaks some of them.
            raise ValueError(f"candidate name must be printable, got {v!r}")
        return v

    @field_validator("input_price", "output_price", "cache_read_price", "cache_write_price", "request_price",
                     mode="before")
    @classmethod
    def _price_not_bool(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, bool):
            raise ValueError(f"{info.field_name} must be a number, got {v!r}")
        return v

    @field_validator("input_price", "output_price", "cache_read_price", "cache_write_price", "request_price")
    @classmethod
    def _price_valid(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None:
            return None
        if not math.isfinite(v) or v < 0:
            unit = "USD per request" if info.field_name == "request_price" else "USD per 1M tokens"
            raise ValueError(f"{info.field_name} must be a finite number >= 0 ({unit}), got {v}")
        return float(v) + 0.0  # -0.0 reads as 0.0

    @field_validator("context_window", "max_output_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

    @field_validator("prior_quality")
    @classmethod
    def _quality_range(cls, v: float | None) -> float | None:
        if v is not None and not (0.0 <= v <= 1.0):
            raise ValueError(f"prior_quality must be in [0, 1], got {v}")
        return v

    @classmethod
    def from_model(cls, model: Any, **overrides: Any) -> Candidate:
        """A candidate for a LangChain chat model, a LlamaIndex LLM or a "provider:model" string, priced by
        genai-prices.

        Prices (USD per 1M tokens: input, output, cache read and write; a per-request fee) come
        from genai-prices' bundled catalogue (never fetched), the context window from it and the
        model (the smaller); tool and structured-output support from the model, whose output
        limit lowers `max_output_tokens` as when an adapter binds it (`with_limits`). Keywords
        are Candidate fields and win (`name=` renames it; the catalogue is searched by the
        model's own name). Tiered prices: see shared_core.catalogue. Raises ValueError for a
        model the catalogue does not know unless `input_price=` and `output_price=` are given,
        TypeError for any other kind of model, ImportError without genai-prices (`pip install
        'omniroute[prices]'`).
        """
        from .catalogue import candidate_from_model  # the catalogue builds Candidates: imported on use

        return candidate_from_model(model, **overrides)

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """US dollars for a call with these token counts."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {input_tokens}, {output_tokens}")
        return (
            float(price_tokens(input_tokens, output_tokens, self.input_price, self.output_price)) + self.request_price
        )

    def worst_case_cost(self, input_tokens: float, max_tokens: int | None = None) -> float:
        """The most a call can cost: every input token at the dearest input rate (plain or prompt-cache)
        plus the full output allowance (`max_tokens`, at most `max_output_tokens`)."""
        out = self.max_output_tokens if max_tokens is None else min(max_tokens, self.max_output_tokens)
        return float(price_tokens(input_tokens, out, self.dearest_input_price, self.output_price)) + self.request_price

    @property
    def dearest_input_price(self) -> float:
        """USD per 1M input tokens at the dearest input rate: plain, cache read or cache write."""
        return max(self.input_price, self.cache_read_price or 0.0, self.cache_write_price or 0.0)

    @property
    def image_rule(self) -> str | None:
        """The image token rule of the API it speaks ("openai", "anthropic"); None: each block's shape's."""
        return self.provider if self.provider in ("openai", "anthropic") else None

    def with_limits(
        self, *, context_window: int | None = None, max_output_tokens: int | None = None, provider: str | None = None,
        client_cap: int | None = None,
    ) -> Candidate:
        """This candidate with the limits (and provider) its framework model declares (None = not declared).

        The model's context window replaces the default one (a window stated here wins). The
        client's own output cap (`client_cap`: ChatOpenAI(max_tokens=8000)) is what its user asked
        for: it becomes `max_output_tokens`, above the default too, unless that is stated here. The
        model's output limit (`max_output_tokens`, e.g. from its profile) only lowers it: reserving a
        model's whole 16k-token ability on every call is not what an unstated cap should mean. The
        result is both reserved and sent as the cap.
        """
        update: dict[str, Any] = {}
        if provider and self.provider is None:
            update["provider"] = provider
        if context_window is not None and context_window > 0 and "context_window" not in self.model_fields_set:
            update["context_window"] = int(context_window)
        cap = self.max_output_tokens
        if client_cap is not None and client_cap > 0 and "max_output_tokens" not in self.model_fields_set:
            cap = int(client_cap)
        if max_output_tokens is not None and 0 < max_output_tokens < cap:
            cap = int(max_output_tokens)
        update["max_output_tokens"] = cap
        return self.derived(**{k: v for k, v in update.items() if v != getattr(self, k)})

    def with_capabilities(
        self, *, supports_tools: bool | None = None, supports_structured_output: bool | None = None
    ) -> Candidate:
        """This candidate with the capabilities its framework model declares, where it states none itself
        (None = not declared)."""
        declared = {"supports_tools": supports_tools, "supports_structured_output": supports_structured_output}
        return self.derived(**{
            k: v for k, v in declared.items()
            if v is not None and k not in self.model_fields_set and v != getattr(self, k)
        })

    def derived(self, **values: Any) -> Candidate:
        """This candidate with `values` read from its framework model, not stated: the fields stated
        stay those its user gave (`model_fields_set`), so `Router.save` keeps them apart and a router
        loaded with other clients reads their limits afresh. The values are validated as at
        construction (pydantic's ValidationError naming the field); a subclass stays itself."""
        if not values:
            return self
        checked = type(self).model_validate({**self.model_dump(), **values})  # `model` is not dumped
        fields = {**dict(checked), "model": self.model}
        return type(self).model_construct(_fields_set=set(self.model_fields_set), **fields)

    def read_from_client(self) -> dict[str, Any]:
        """What `derived` took from a framework client: the CLIENT_FIELDS its user did not state that
        hold something other than their default (JSON values)."""
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in self._client_said()}

    def unbound(self) -> Candidate:
        """This candidate without what a client said: its unstated CLIENT_FIELDS at their defaults, as
        before a (new) client is read (the adapters bind each client to this)."""
        said = self._client_said()
        if not said:
            return self
        reset = {name: type(self).model_fields[name].default for name in said}
        return type(self).model_construct(_fields_set=set(self.model_fields_set), **{**dict(self), **reset})

    def _client_said(self) -> list[str]:
        """The CLIENT_FIELDS its user did not state that differ from their defaults."""
        fields = type(self).model_fields
        return [name for name in CLIENT_FIELDS
                if name not in self.model_fields_set and getattr(self, name) != fields[name].default]


#: The fields a framework client declares (Candidate.with_limits, Candidate.with_capabilities, the
#: adapters): unless its user states them, each binding reads them from the client afresh.
CLIENT_FIELDS = ("context_window", "max_output_tokens", "provider", "supports_tools", "supports_structured_output",
                 "accepts_output_cap")


def validate_candidates(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """The candidates as a tuple, after checking there is at least one and names are unique."""
    if isinstance(candidates, Candidate):  # it iterates as (field, value) pairs: say what went wrong
        raise TypeError(f"candidates must be a sequence of Candidate, got one Candidate: put it in a list "
                        f"([{candidates.name!r} candidate])")
    result: Sequence[Candidate] = tuple(candidates)
    if not result:
        raise ValueError("at least one candidate is required")
    seen: set[str] = set()
    for c in result:
        if not isinstance(c, Candidate):
            raise TypeError(f"expected Candidate, got {type(c).__name__}")
        if c.name in seen:
            raise ValueError(f"duplicate candidate name {c.name!r}")
        seen.add(c.name)
    return tuple(result)
