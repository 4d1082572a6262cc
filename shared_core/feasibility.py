"""Which candidates can serve a request, and why the others cannot: the one statement of the rule.

The router's mask and the text of its NoFeasibleCandidate error both come from `reasons`, so a
new capability is added here once (a field on Candidate, a field on Request and a keyword on
`Router.decide`, a line in CAPABILITIES) and both follow.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from .candidates import Candidate

__all__ = ["CAPABILITIES", "Request", "capabilities", "describe", "output_caps", "reasons"]


@dataclass(frozen=True)
class Request:
    """What a request needs of a candidate: an output cap, tools, structured output, a model or none of some."""

    max_tokens: int | None = None
    tools: bool = False
    structured_output: bool = False
    exclude: Collection[str] = ()
    model: str | None = None


def output_caps(
    input_tokens: np.ndarray, max_output: np.ndarray, window: np.ndarray, max_tokens: int | None,
    *, uncapped: np.ndarray | None = None,
) -> np.ndarray:
    """Output tokens each candidate (last axis) may write for a prompt (≤ 0: it cannot serve it).

    Input plus output must fit the context window. An explicit `max_tokens` is the cap asked
    for (above the candidate's own output limit it is lowered to it), and a prompt too long to
    leave room for it makes the candidate infeasible; without one the cap is the candidate's
    output limit, shortened to the room the prompt leaves, as providers do. A candidate marked
    `uncapped` (its client cannot be sent a cap) writes up to its own limit whatever was asked:
    that is its cap, and its worst case.
    """
    room = np.minimum(max_output, window - input_tokens)
    if max_tokens is None:
        return room
    caps = np.minimum(max_output, float(max_tokens))
    caps = np.where(input_tokens + caps <= window, caps, 0.0)
    return caps if uncapped is None else np.where(uncapped, room, caps)


#: What a request may need of a candidate: (Request field, Candidate field, why one without it cannot serve).
CAPABILITIES: tuple[tuple[str, str, str], ...] = (
    ("tools", "supports_tools", "cannot call tools"),
    ("structured_output", "supports_structured_output", "no structured output"),
)


def capabilities(candidates: Sequence[Candidate]) -> dict[str, np.ndarray]:
    """Per CAPABILITIES entry, which candidates have it: {Candidate field: bool array (m,)}."""
    return {field: np.array([bool(getattr(c, field)) for c in candidates], dtype=bool)
            for _, field, _ in CAPABILITIES}


class Lineup(Protocol):
    """What `reasons` reads of the candidates (estimation.Lineup)."""

    @property
    def candidates(self) -> tuple[Candidate, ...]: ...

    @property
    def index(self) -> Mapping[str, int]: ...

    def candidate(self, name: str) -> Candidate: ...

    @property
    def capabilities(self) -> Mapping[str, np.ndarray]: ...


def _rules(
    lineup: Lineup, input_tokens: np.ndarray, caps: np.ndarray, request: Request,
) -> list[tuple[np.ndarray, Callable[[int], str]]]:
    """Each rule `request` brings: which candidates (m,) it rules out, and why (text for candidate j)."""
    m = len(lineup.candidates)
    rules: list[tuple[np.ndarray, Callable[[int], str]]] = []
    if request.model is not None:
        other = np.ones(m, dtype=bool)
        other[lineup.index[lineup.candidate(request.model).name]] = False  # KeyError naming the known ones
        rules.append((other, lambda j: f"not the model asked for ({request.model})"))
    if request.exclude:
        excluded = np.zeros(m, dtype=bool)
        excluded[[lineup.index[n] for n in request.exclude if n in lineup.index]] = True
        rules.append((excluded, lambda j: "excluded"))
    asked = "" if request.max_tokens is None else f" plus max_tokens={request.max_tokens}"
    rules.append((caps < 1, lambda j: f"prompt of {int(input_tokens[j])} tokens{asked} exceeds its context window "
                                      f"of {lineup.candidates[j].context_window}"))
    for need, field, text in CAPABILITIES:
        if getattr(request, need):
            rules.append((~lineup.capabilities[field], partial(_fixed, text)))
    return rules


def _ruled_out(rules: list[tuple[np.ndarray, Callable[[int], str]]]) -> np.ndarray:
    """The candidates (bool, m) some rule rules out."""
    if len(rules) == 1:  # the window alone (most requests)
        return rules[0][0]
    return np.logical_or.reduce([mask for mask, _ in rules])


def feasible(lineup: Lineup, input_tokens: np.ndarray, caps: np.ndarray, request: Request) -> np.ndarray:
    """Which candidates (bool, m) can serve `request` (`reasons` says why the others cannot)."""
    return ~_ruled_out(_rules(lineup, input_tokens, caps, request))


def reasons(lineup: Lineup, input_tokens: np.ndarray, caps: np.ndarray, request: Request) -> list[tuple[str, ...]]:
    """Per candidate, why it cannot serve `request` (empty: it can); `input_tokens` and `caps` are
    per candidate (m,), the caps from `output_caps`. Each rule is a mask over all candidates, so
    the cost per candidate is a few array elements; text is made only for those ruled out."""
    rules = _rules(lineup, input_tokens, caps, request)
    why: list[tuple[str, ...]] = [()] * len(lineup.candidates)
    for j in np.flatnonzero(_ruled_out(rules)):
        why[j] = tuple(text(int(j)) for mask, text in rules if mask[j])
    return why


def _fixed(text: str, j: int) -> str:
    return text


def describe(lineup: Lineup, why: Sequence[tuple[str, ...]], request: Request) -> str:
    """The NoFeasibleCandidate message: each candidate's reasons (only the asked-for model's, when one is)."""
    listed = [f"{c.name}: {', '.join(w)}" for c, w in zip(lineup.candidates, why, strict=False)
              if request.model is None or c.name == request.model]
    message = "no candidate can serve this request (" + "; ".join(listed) + ")"
    # A capability no candidate declares is usually one that was never declared, not one missing.
    undeclared = [field for need, field, _ in CAPABILITIES
                  if getattr(request, need) and not lineup.capabilities[field].any()]
    if undeclared:
        flags = ", ".join(f"{field}=True" for field in undeclared)
        message += (f"; no candidate declares {' or '.join(undeclared)}: if one can, say so with "
                    f"Candidate(..., {flags}) or its framework model's own flag (e.g. LlamaIndex "
                    "OpenAILike(is_function_calling_model=True))")
    return message
