"""A callback handler that totals routed spend per session and model."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult

from shared_core.metering import METADATA_KEY, record_charges

__all__ = ["SpendTracker"]


class SpendTracker(BaseCallbackHandler):
    """Totals the actual cost ChatOmniRoute reports, per (session, model); pass it in `callbacks`.

    Each routing decision is counted once, however many generations or replays carry it;
    answers from LangChain's cache report a cost of 0. Failed attempts charged before the answer
    (their worst case: they timed out, and the provider may bill them) count for their model;
    `calls` counts answers only. A call that raises instead of answering is not seen here: what
    its attempts were charged is in the ledger (and in `AllCandidatesFailed.charged_usd` when
    every candidate tried failed). Thread-safe.
    """

    run_inline = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.usd: dict[tuple[str | None, str], float] = defaultdict(float)
        self.calls: dict[tuple[str | None, str], int] = defaultdict(int)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Add the cost of every routed generation in the result."""
        for generations in response.generations:
            for generation in generations:
                if not isinstance(generation, ChatGeneration):
                    continue
                summary = generation.message.response_metadata.get(METADATA_KEY)
                if summary:
                    self._add(summary)

    def _add(self, summary: dict[str, Any]) -> None:
        with self._lock:
            if summary["decision_id"] in self._seen:
                return
            self._seen.add(summary["decision_id"])
            for model, usd in record_charges(summary):
                self.usd[(summary["session"], model)] += usd
            self.calls[(summary["session"], summary["model"])] += 1

    @property
    def total_usd(self) -> float:
        """Everything spent through the tracked runs."""
        with self._lock:
            return sum(self.usd.values())

    def by_session(self) -> dict[str | None, float]:
        """Spend per session (None for calls that named none)."""
        with self._lock:
            totals: dict[str | None, float] = defaultdict(float)
            for (scope, _), usd in self.usd.items():
                totals[scope] += usd
            return dict(totals)

    def by_model(self) -> dict[str, float]:
        """Spend per candidate."""
        with self._lock:
            totals: dict[str, float] = defaultdict(float)
            for (_, model), usd in self.usd.items():
                totals[model] += usd
            return dict(totals)
