"""What a routed answer is charged, and the routing record it carries: the money rules both adapters share."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .calls import FallbackStream, Settlement, settle_interrupted, settle_usage
from .pricing import Reported, Usage, usage_from_report
from .router import Decision, Router

__all__ = [
    "METADATA_KEY", "StreamSettlement", "ToolCallPart", "combined_usage", "record_charges", "routing_record",
    "tool_call_text",
]

#: Where a routed response carries its routing record: LangChain's `response_metadata`, LlamaIndex's
#: `additional_kwargs` (money lives there, never in a framework's integer token counts).
METADATA_KEY = "omniroute"


def routing_record(decision: Decision, settlement: Settlement | None = None, **context: Any) -> dict[str, Any]:
    """The routing record a response carries under METADATA_KEY: the decision's summary and, once
    settled, its usage and costs; `context` adds what only one framework knows (LangChain's
    session and cache flag)."""
    record = decision.to_dict() if settlement is None else {**decision.to_dict(), **settlement.to_dict()}
    return {**record, **context}


def record_charges(record: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(model, USD) for everything a settled routing record was charged: the answering model's
    actual cost, then each failed attempt charged its worst case (a timeout the provider may bill)."""
    charges = [(record["model"], record["actual_cost_usd"])]
    charges += [(f["model"], f["charged_usd"]) for f in record.get("failures", ()) if f.get("charged_usd")]
    return charges


def tool_call_text(name: str, arguments: Any) -> str:
    """A tool call as output to count: its name and its arguments as JSON (a string of arguments is
    read as JSON first, so a streamed call counts as the same call answered whole; one that does not
    parse, cut off mid-stream, counts as written)."""
    if isinstance(arguments, str):
        if not arguments:
            arguments = {}
        else:
            try:
                arguments = json.loads(arguments, strict=False)
            except ValueError:
                return name + arguments
    return name + json.dumps(arguments)


@dataclass(frozen=True)
class ToolCallPart:
    """A piece of a streamed tool call: pieces with one `index` are one call (name and arguments
    concatenated); a piece without an index is a call of its own."""

    index: int | None
    name: str | None = None
    arguments: str | None = None


class StreamSettlement:
    """One routed stream's books: what it produced, settled by the core's rule when it ends.

    The adapter feeds each chunk in: `add` for a chunk that adds to the answer (a delta, as
    LangChain streams), `restate` for one that repeats the whole answer so far (as LlamaIndex
    streams). Then exactly one of `finished` (the stream ended) or `interrupted` (it raised, or
    the reader stopped it). The charge uses the provider's usage when it reported it (reports in
    parts are summed) and counts the produced text otherwise; see `settle_usage` and
    `settle_interrupted`. `decision` is the stream's: the candidate that streamed, after fallbacks.
    """

    def __init__(self, router: Router, stream: FallbackStream[Any]) -> None:
        self.router = router
        self._stream = stream
        self._text: list[str] = []
        self._calls: list[list[Any]] = []  # [index, name, arguments] per call, in order of appearance
        self._reports: list[Any] = []
        self._started = False

    @property
    def decision(self) -> Decision:
        """The decision of the candidate streaming (the fallback loop replaces it until the first chunk)."""
        return self._stream.decision

    @property
    def started(self) -> bool:
        """Whether the stream has produced any chunk."""
        return self._started

    def add(self, text: str = "", usage: Any = None, tool_calls: Iterable[ToolCallPart] = ()) -> None:
        """A chunk that adds to the answer: its text, its usage report (None if it has none) and its
        tool-call pieces."""
        self._started = True
        if text:
            self._text.append(text)
        if usage is not None:
            self._reports.append(usage)
        for part in tool_calls:
            call = next((c for c in self._calls if part.index is not None and c[0] == part.index), None)
            if call is None:
                self._calls.append([part.index, part.name or "", part.arguments or ""])
            else:
                call[1] += part.name or ""
                call[2] += part.arguments or ""

    def restate(self, text: str, usage: Any = None) -> None:
        """A chunk that repeats the whole answer so far (tool calls written into `text`) and the usage
        reported for all of it."""
        self._started = True
        self._text = [text]
        self._reports = [] if usage is None else [usage]
        self._calls = []

    def finished(self) -> Settlement:
        """Settle the stream that ended: what it produced (the input alone, counted, if nothing)."""
        return settle_usage(self.router, self.decision, combined_usage(self._reports), self._produced())

    def interrupted(self, error: BaseException) -> Settlement | None:
        """Settle the stream `error` stopped: what it produced when the provider broke it, its worst
        case when the reader stopped it; None before its first chunk (the fallback loop released
        that reservation)."""
        if not self._started:
            return None
        return settle_interrupted(
            self.router, self.decision, error, combined_usage(self._reports), self._produced()
        )

    def _produced(self) -> str:
        return "\n".join(["".join(self._text), *(tool_call_text(name, args) for _, name, args in self._calls)])


def combined_usage(reports: Sequence[Any]) -> Any:
    """One report, for `settle_usage`, of usage reported in parts (a stream's input with its first
    chunk and output with its last; a call's several answers): summed, a single report as it came,
    None for none."""
    if len(reports) < 2:
        return reports[0] if reports else None
    readings = [r for r in map(usage_from_report, reports) if r is not None]
    if not readings:
        return None
    usage = Usage(**{f.name: sum(getattr(r.usage, f.name) for r in readings) for f in fields(Usage)})
    return Reported(usage, any(r.has_input for r in readings), any(r.has_output for r in readings))
