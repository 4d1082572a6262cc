"""OmniRouteSelector: RouterQueryEngine / RouterRetriever pick the choice whose candidate the core picks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle
from llama_index.core.tools.types import ToolMetadata
from pydantic import InstanceOf

from shared_core.router import Decision, Router

from .llm import OmniRouteLLM

__all__ = ["OmniRouteSelector", "RoutedSelection"]


class RoutedSelection(SelectorResult):
    """A single selection with the router's decision behind it (RouterQueryEngine puts it in
    `response.metadata["selector_result"]`)."""

    decision: InstanceOf[Decision]


class OmniRouteSelector(BaseSelector):
    """Selects among query engines or retrievers by routing the query to their candidates' LLMs.

    `choices` maps each choice's tool name to the candidate that answers behind it. The selector
    asks the core which of those candidates this query should go to under the session budget
    (BudgetExceeded when none fits) and explains the choice in `SingleSelection.reason`.

    Selecting spends nothing, so the decision's reservation is released at once: the money is
    charged by the chosen engine's own LLM calls, each reserved and settled with its exact usage
    when that engine's LLM is `selector.llm_for(choice)` (an OmniRouteLLM pinned to the candidate).
    Keeping the selection's reservation open until the query ends would need a settle hook that
    RouterQueryEngine does not have, and settling the estimate would commit money no call spent.
    """

    def __init__(self, router: Router, choices: Mapping[str, str], *, session: str | None = None) -> None:
        for candidate in choices.values():
            router.candidate(candidate)
        if len(set(choices.values())) != len(choices):
            raise ValueError(f"each choice needs its own candidate, got {dict(choices)}")
        self.router = router
        self.choices = dict(choices)
        self.session = session

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
        """No prompts: the choice is computed, not asked of an LLM."""
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        """Nothing to update (see _get_prompts)."""

    def _select(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> RoutedSelection:
        names = [self._candidate(choice.name) for choice in choices]
        others = [c.name for c in self.router.candidates if c.name not in names]
        decision = self.router.decide(query.query_str, self.session, exclude=others)
        self.router.release(decision)
        index = names.index(decision.chosen)
        return RoutedSelection(
            selections=[SingleSelection(index=index, reason=_reason(choices[index], decision))], decision=decision
        )

    async def _aselect(self, choices: Sequence[ToolMetadata], query: QueryBundle) -> RoutedSelection:
        return self._select(choices, query)


def _reason(choice: ToolMetadata, decision: Decision) -> str:
    chosen = decision.chosen
    at = decision.ranking.index(chosen)
    text = (
        f"OmniRoute routes this query to candidate {chosen!r} behind {choice.name!r}: predicted quality "
        f"{decision.quality[chosen]:.3f}, estimated cost ${decision.cost[chosen]:.6f} at a price of money "
        f"λ={decision.lam:.4g}"
    )
    if at:  # the core reserves for the best-scored candidate that fits the budget
        text += f"; {', '.join(decision.ranking[:at])} scored higher but did not fit the remaining budget"
    if decision.ranking[at + 1:]:
        text += f"; {', '.join(decision.ranking[at + 1:])} scored lower"
    return text
