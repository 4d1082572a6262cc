"""Candidate models: a name, prices, limits, capabilities and the framework object to call."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Candidate", "validate_candidates"]


class Candidate(BaseModel):
    """One model the router may choose; prices are US dollars per million tokens."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    name: str = Field(description="Unique name; matches the model's column in a routing dataset.")
    input_price: float = Field(description="USD per 1M input (prompt) tokens.")
    output_price: float = Field(description="USD per 1M output (completion) tokens.")
    context_window: int = Field(128_000, description="Most tokens of prompt + output accepted.")
    max_output_tokens: int = Field(4096, description="Most output tokens; the worst case reserved.")
    encoding: str = Field("cl100k_base", description="tiktoken encoding or model name for counting.")
    supports_tools: bool = Field(True, description="Can serve requests that carry tool schemas.")
    supports_structured_output: bool = Field(True, description="Can serve structured-output requests.")
    prior_quality: float | None = Field(None, description="Expected quality in [0, 1] without data.")
    model: Any = Field(None, exclude=True, description="The framework model; the core never calls it.")

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("candidate name must be a non-empty string")
        return v

    @field_validator("input_price", "output_price")
    @classmethod
    def _price_valid(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"price must be a finite number >= 0 (USD per 1M tokens), got {v}")
        return float(v)

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

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """US dollars for a call with these token counts."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {input_tokens}, {output_tokens}")
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6

    def worst_case_cost(self, input_tokens: float, max_tokens: int | None = None) -> float:
        """The most a call can cost: its input plus the full output allowance."""
        out = self.max_output_tokens if max_tokens is None else min(max_tokens, self.max_output_tokens)
        return self.cost(input_tokens, out)


def validate_candidates(candidates: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """The candidates as a tuple, after checking there is at least one and names are unique."""
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
