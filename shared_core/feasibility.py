"""Which candidates can serve a request, and why the others cannot: the one statement of the rule.

The router's mask and the text of its NoFeasibleCandidate error both come from `reasons`, so a
new capability is added here once (a field on Candidate, a keyword on `Router.decide`, a line
below) and both follow.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from .candidates import Candidate

__all__ = ["Request", "describe", "output_caps", "reasons"]


@dataclass(frozen=True)
class Request:
    """What a request needs of a candidate: an output cap, tools, structured output, a model or none of some."""

    max_tokens: int | None = None
    tools: bool = False
    structured_output: bool = False
    exclude: Collection[str] = ()
    model: str | None = None


def output_caps(
    input_tokens: np.ndarray, max_output: np.ndarray, window: np.ndarray, max_tokens: int | None
) -> np.ndarray:
    """Output tokens each candidate may write for a prompt (≤ 0: it cannot serve it).

    Input plus output must fit the context window. An explicit `max_tokens` is the cap asked
    for (above the candidate's own output limit it is lowered to it), and a prompt too long to
    leave room for it makes the candidate infeasible; without one the cap is the candidate's
    output limit, shortened to the room the prompt leaves, as providers do.
    """
    if max_tokens is None:
        return np.minimum(max_output, window - input_tokens)
    caps = np.minimum(max_output, float(max_tokens))
    return np.where(input_tokens + caps <= window, caps, 0.0)


def reasons(
    candidates: Sequence[Candidate], input_tokens: np.ndarray, caps: np.ndarray, request: Request
) -> list[tuple[str, ...]]:
    """Per candidate, why it cannot serve `request` (empty: it can); `input_tokens` and `caps` are
    per candidate, the caps from `output_caps`."""
    out = []
    for j, c in enumerate(candidates):
        why = []
        if request.model is not None and c.name != request.model:
            why.append(f"not the model asked for ({request.model})")
        if c.name in request.exclude:
            why.append("excluded")
        if caps[j] < 1:
            asked = "" if request.max_tokens is None else f" plus max_tokens={request.max_tokens}"
            why.append(f"prompt of {int(input_tokens[j])} tokens{asked} exceeds its context window of "
                       f"{c.context_window}")
        if request.tools and not c.supports_tools:
            why.append("cannot call tools")
        if request.structured_output and not c.supports_structured_output:
            why.append("no structured output")
        out.append(tuple(why))
    return out


def describe(candidates: Sequence[Candidate], why: Sequence[tuple[str, ...]], request: Request) -> str:
    """The NoFeasibleCandidate message: each candidate's reasons (only the asked-for model's, when one is)."""
    listed = [f"{c.name}: {', '.join(w)}" for c, w in zip(candidates, why, strict=False)
              if request.model is None or c.name == request.model]
    return "no candidate can serve this request (" + "; ".join(listed) + ")"
