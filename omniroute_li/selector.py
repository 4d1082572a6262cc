"""OmniRouteSelector: RouterQueryEngine / RouterRetriever pick the choice whose candidate the core picks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata
from pydantic import InstanceOf

from shared_core.offload import reserve_off_loop
from shared_core.router import MIN_RESERVATION_TTL_S, Decision, Router

from .held import hold
from .llm import OmniRouteLLM

__all__ = ["OmniRouteSelector", "RoutedSelection"]


class RoutedSelection(SelectorResult):
    """A single selection with the router's decision behind it (RouterQueryEngine puts it in
    `response.metadata["selector_result"]`)."""

    decision: InstanceOf[Decision]


class OmniRouteSelector(BaseSelector):
    """Selects among query engines or retrievers by what each is for and what its model costs.

    `choices` maps each choice's tool name to the candidate that answers behind it. For a query,
    each choice's candidate gets the core's predicted quality, scaled by the choice's
    `relevance` to the query, and its cost under the session's budget; the best quality − λ·cost
    that fits wins (BudgetExceeded when none fits), and `SingleSelection.reason` says why.
    `relevance` is how the engines' descriptions are read:

    - a LlamaIndex `BaseEmbedding`: the cosine similarity of the query to each description,
      relative to the best one (negative similarities count 0);
    - a LlamaIndex selector (`LLMSingleSelector`, `EmbeddingSingleSelector`, a multi-selector):
      the choices it selects, and only those, are weighed by cost;
    - None: every choice is relevant; the budget and predicted quality alone decide.

    The selection reserves the chosen engine's call: the query plus `engine_prompt_tokens` of
    retrieved context and template, plus the candidate's output cap. With `hold=True` the
    reservation waits for the engine's first LLM call through `selector.llm_for(choice)` (an
    OmniRouteLLM pinned to the candidate), which releases it as it reserves and settles its
    exact cost; so the money the selection counted on is there when the engine calls. A hold no
    call takes over (the engine failed first) lapses after `hold_ttl_s`. Use `hold=False` for
    RouterRetriever, whose retrievers make no LLM call to take the hold over.
    """

    def __init__(
        self,
        router: Router,
        choices: Mapping[str, str],
        *,
        session: str | None = None,
        relevance: BaseEmbedding | BaseSelector | None = None,
        engine_prompt_tokens: int = 2_000,
        hold: bool = True,
        hold_ttl_s: float = 60.0,
    ) -> None:
        for candidate in choices.values():
            router.candidate(candidate)
        if len(set(choices.values())) != len(choices):
            raise ValueError(f"each choice needs its own candidate, got {dict(choices)}")
        if relevance is not None and not isinstance(relevance, (BaseEmbedding, BaseSelector)):
            raise TypeError(f"relevance must be a LlamaIndex BaseEmbedding or selector, got {type(relevance).__name__}")
        if (
            isinstance(engine_prompt_tokens, bool)
            or not isinstance(engine_prompt_tokens, int)
            or engine_prompt_tokens < 0
        ):
            raise ValueError(f"engine_prompt_tokens must be a whole number >= 0, got {engine_prompt_tokens!r}")
        self.router = router
        self.choices = dict(choices)
        self.session = session
        self.relevance = relevance
        self.engine_prompt_tokens = engine_prompt_tokens
        self.hold = hold
        if not (isinstance(hold_ttl_s, (int, float)) and MIN_RESERVATION_TTL_S <= hold_ttl_s < float("inf")):
            raise ValueError(f"hold_ttl_s must be a number of seconds >= {MIN_RESERVATION_TTL_S}, got {hold_ttl_s!r}")
        self.hold_ttl_s = float(hold_ttl_s)
        self._descriptions: dict[tuple[str, ...], list[list[float]]] = {}

    def llm_for(self, choice: str) -> OmniRouteLLM:
        """The LLM for the engine behind `choice`: pinned to its candidate, charging this session."""
        return OmniRouteLLM(router=self.router, session=self.session, model=self._candidate(choice))

    def _candidate(self, choice: str | None) -> str:
        if choice is None or choice not in self.choices:
            raise ValueError(
                f"choice {choice!r} has no candidate: give its tool a name and map it in choices= "
                f"(known: {sorted(self.choices)})"
            )
        return self.choices[choice]

    def _get_prompts(self) -> PromptDictType:
        """The relevance selector's prompts, if it has any."""
        return self.relevance.get_prompts() if isinstance(self.relevance, BaseSelector) else {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """Update the relevance selector's prompts, if it has any."""
        if isinstance(self.relevance, BaseSelector):
            self.relevance.update_prompts(prompts)

    # ------------------------------------------------------------------ relevance
    def _embedding_relevance(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> list[float]:
        embed = self.relevance
        key = tuple(c.description for c in choices)
        if key not in self._descriptions:
            self._descriptions[key] = embed.get_text_embedding_batch(list(key))
        return _relative(embed.get_query_embedding(query.query_str), self._descriptions[key])

    async def _aembedding_relevance(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> list[float]:
        embed = self.relevance
        key = tuple(c.description for c in choices)
        if key not in self._descriptions:
            self._descriptions[key] = await embed.aget_text_embedding_batch(list(key))
        return _relative(await embed.aget_query_embedding(query.query_str), self._descriptions[key])

    @staticmethod
    def _selected(choices: Sequence[ToolMetadata], result: SelectorResult) -> list[float]:
        picked = {s.index for s in result.selections}
        return [1.0 if i in picked else 0.0 for i in range(len(choices))]

    # ------------------------------------------------------------------ selection
    def _choose(
        self, choices: Sequence[ToolMetadata], query: QueryBundle, scores: list[float] | None
    ) -> RoutedSelection:
        names = [self._candidate(choice.name) for choice in choices]
        others = [c.name for c in self.router.candidates if c.name not in names]
        decision = self.router.decide(
            query.query_str, self.session, exclude=others,
            weights=None if scores is None else dict(zip(names, scores, strict=False)),
            extra_input_tokens=self.engine_prompt_tokens,
            reservation_ttl_s=self.hold_ttl_s if self.hold else None,
        )
        if self.hold:
            hold(self.router, decision)
        else:
            self.router.release(decision)
        index = names.index(decision.chosen)
        relevance = None if scores is None else scores[index]
        return RoutedSelection(
            selections=[SingleSelection(index=index, reason=_reason(choices[index], decision, relevance))],
            decision=decision,
        )

    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> RoutedSelection:
        if isinstance(self.relevance, BaseEmbedding):
            scores = self._embedding_relevance(choices, query)
        elif isinstance(self.relevance, BaseSelector):
            scores = self._selected(choices, self.relevance.select(choices, query))
        else:
            scores = None
        return self._choose(choices, query, scores)

    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> RoutedSelection:
        if isinstance(self.relevance, BaseEmbedding):
            scores = await self._aembedding_relevance(choices, query)
        elif isinstance(self.relevance, BaseSelector):
            scores = self._selected(choices, await self.relevance.aselect(choices, query))
        else:
            scores = None
        # Decided in routing's worker threads; the hold it leaves is kept in this task's context,
        # where the chosen engine's call claims it.
        return await reserve_off_loop(
            partial(self._choose, choices, query, scores), lambda chosen: self.router.release(chosen.decision)
        )


def _relative(query: Sequence[float], descriptions: Sequence[Sequence[float]]) -> list[float]:
    """Cosine similarity of the query to each description, relative to the best (negatives → 0)."""
    q = np.asarray(query, dtype=np.float64)
    d = np.asarray(descriptions, dtype=np.float64)
    with np.errstate(all="ignore"):  # extreme vectors overflow: then relevance says nothing
        q = q / (np.abs(q).max(initial=0.0) or 1.0)
        d = d / np.maximum(np.abs(d).max(axis=1, keepdims=True, initial=0.0), 1e-300)
        norms = np.linalg.norm(d, axis=1) * np.linalg.norm(q)
        cos = np.divide(d @ q, norms, out=np.zeros(len(d)), where=norms > 0)
    best = cos.max(initial=0.0)
    if not np.all(np.isfinite(cos)) or best <= 0:
        return [1.0] * len(d)  # nothing resembles the query: relevance says nothing
    return [float(max(0.0, c) / best) for c in cos]


def _reason(choice: ToolMetadata, decision: Decision, relevance: float | None) -> str:
    chosen = decision.chosen
    at = decision.ranking.index(chosen)
    weighed = "" if relevance is None else f" (relevance {relevance:.2f} to this query)"
    text = (
        f"OmniRoute routes this query to candidate {chosen!r} behind {choice.name!r}{weighed}: predicted quality "
        f"{decision.quality[chosen]:.3f}, estimated cost ${decision.cost[chosen]:.6f} at a price of money "
        f"λ={decision.lam:.4g}"
    )
    if at:  # the core reserves for the best-scored candidate that fits the budget
        text += f"; {', '.join(decision.ranking[:at])} scored higher but did not fit the remaining budget"
    if decision.ranking[at + 1:]:
        text += f"; {', '.join(decision.ranking[at + 1:])} scored lower"
    return text
