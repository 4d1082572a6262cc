"""Routed spend through LlamaIndex instrumentation: the event each settled call emits, and a tracker."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from llama_index.core.base.llms.types import ChatResponse, CompletionResponse
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import PrivateAttr

from shared_core.metering import METADATA_KEY, record_charges

__all__ = ["CandidateFailedEvent", "RoutedCallEndEvent", "SpendTracker"]


class CandidateFailedEvent(BaseEvent):
    """A routed call's attempt failed (the router then falls back, or raises).

    `model` is the candidate, `kind` the failure's kind ("transient", "misconfigured",
    "invalid_request", "programming", "unknown": shared_core.fallbacks), `error` and `message`
    the error's type and text, `charged_usd` what the attempt was charged (its worst case when the
    provider may bill it, else 0). The candidate's own LLM start event has no end event when its call
    raised; this is the event that pairs it.
    """

    model: str
    kind: str
    error: str
    message: str
    charged_usd: float = 0.0  # the attempt's worst case when its provider may bill it (a timeout), else 0

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's event name."""
        return "CandidateFailedEvent"


class RoutedCallEndEvent(BaseEvent):
    """An OmniRouteLLM call was settled in the ledger.

    `record` is the routing record (`additional_kwargs["omniroute"]` of the routed response:
    model, scope, decision_id, usage, `actual_cost_usd`, ...); `response` is the routed
    response, or None for a stream the reader abandoned, which is charged all the same.
    """

    record: dict[str, Any]
    response: ChatResponse | CompletionResponse | None = None

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's event name."""
        return "RoutedCallEndEvent"


class SpendTracker(BaseEventHandler):
    """Totals what routed calls cost, per (session, model), from their routing records.

    An instrumentation event handler, LlamaIndex's recommended way to observe calls: register it
    on the root dispatcher (`llama_index.core.instrumentation.get_dispatcher().add_event_handler(
    tracker)`) and it hears every OmniRouteLLM call as it is settled, streams (and abandoned
    streams) included; `track(response)` adds a routed response by hand. The session is the scope
    the call charged (None when no budget applied). Each decision counts once, however often its
    record is seen. Failed attempts charged before the answer (their worst case: they timed out,
    and the provider may bill them) count for their model; `calls` counts answers only. A call
    that raises instead of answering is not seen here: what its attempts were charged is in the
    ledger and each `CandidateFailedEvent.charged_usd` (summed in `AllCandidatesFailed.charged_usd`
    when every candidate tried failed). Thread-safe.
    """

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _seen: set[str] = PrivateAttr(default_factory=set)
    _usd: dict[tuple[str | None, str], float] = PrivateAttr(default_factory=lambda: defaultdict(float))
    _calls: dict[tuple[str | None, str], int] = PrivateAttr(default_factory=lambda: defaultdict(int))

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's handler name."""
        return "OmniRouteSpendTracker"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Add the cost of a settled routed call (other events are ignored)."""
        if isinstance(event, RoutedCallEndEvent):
            self.add(event.record)

    def track(self, response: ChatResponse | CompletionResponse) -> None:
        """Add a routed response's cost (a response without a settled record adds nothing)."""
        record = response.additional_kwargs.get(METADATA_KEY)
        if isinstance(record, Mapping):
            self.add(record)

    def add(self, record: Mapping[str, Any]) -> None:
        """Add one routing record's `actual_cost_usd` (once per decision; unsettled records add nothing)."""
        if "actual_cost_usd" not in record:
            return
        with self._lock:
            if record["decision_id"] in self._seen:
                return
            self._seen.add(record["decision_id"])
            for model, usd in record_charges(record):
                self._usd[(record.get("scope"), model)] += usd
            self._calls[(record.get("scope"), record["model"])] += 1

    @property
    def usd(self) -> dict[tuple[str | None, str], float]:
        """Spend per (session, model)."""
        with self._lock:
            return dict(self._usd)

    @property
    def calls(self) -> dict[tuple[str | None, str], int]:
        """Settled calls per (session, model)."""
        with self._lock:
            return dict(self._calls)

    @property
    def total_usd(self) -> float:
        """Everything spent through the tracked calls."""
        with self._lock:
            return sum(self._usd.values())

    def by_session(self) -> dict[str | None, float]:
        """Spend per session (None for calls that no budget applied to)."""
        return self._total(0)

    def by_model(self) -> dict[str, float]:
        """Spend per candidate."""
        return self._total(1)

    def _total(self, part: int) -> dict[Any, float]:
        with self._lock:
            totals: dict[Any, float] = defaultdict(float)
            for key, usd in self._usd.items():
                totals[key[part]] += usd
            return dict(totals)

    def reset(self) -> None:
        """Forget everything tracked so far."""
        with self._lock:
            self._seen.clear()
            self._usd.clear()
            self._calls.clear()
