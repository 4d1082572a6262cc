"""OpenTelemetry spans for routed calls, under whatever tracer provider the application configured.

One CLIENT span per routed call, named "chat {first candidate}", from its first attempt to its
settlement, with the GenAI semantic conventions' attributes (gen_ai.*) and OmniRoute's
(omniroute.*). A failed attempt is an event on that span, not a span of its own: the provider
client's own instrumentation (the anthropic SDK's, opentelemetry-instrumentation-openai) already
makes one span per attempt, and nests it under this one, which is current while the client runs.

Nothing needs setting up. Without opentelemetry-api (the `otel` extra) nothing is recorded; with
it but no tracer provider configured, the API's no-op tracer makes a call cost about 3 µs more.
A failure in here never fails a call: it is logged (the first at WARNING) and the call goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calls import Settlement
    from .fallbacks import Attempt
    from .router import Decision, Router

__all__ = ["CallSpan", "start"]

logger = logging.getLogger("omniroute")

#: The instrumentation scope's name, as an application's tracing configuration sees it.
TRACER_NAME = "omniroute"

_UNLOADED: Any = object()
_api: Any = _UNLOADED  # opentelemetry.trace once looked for; None when opentelemetry-api is absent
_context: Any = None  # opentelemetry.context
_version = ""
_tracers: tuple[Any, Any] = (None, None)  # (tracer provider, its tracer for OmniRoute)
_warned = False


def _tracer() -> Any:
    """The global tracer provider's tracer, or None without opentelemetry-api.

    Looked up at call time, so a provider the application sets after importing OmniRoute is the
    one used; kept while that provider stays the global one (a lookup costs ~2 µs, a check 0.1).
    """
    global _api, _context, _version, _tracers
    if _api is _UNLOADED:
        try:
            from opentelemetry import context, trace
        except ImportError:  # the `otel` extra is not installed
            _api = None
            return None
        from . import __version__

        _api, _context, _version = trace, context, __version__
    if _api is None:
        return None
    provider, tracer = _tracers
    current = _api.get_tracer_provider()
    if current is not provider:
        tracer = current.get_tracer(TRACER_NAME, _version)
        _tracers = (current, tracer)
    return tracer


def _failed(what: str) -> None:
    """Log a telemetry failure: the first at WARNING with its traceback, the rest at DEBUG."""
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    logger.log(level, "OpenTelemetry: could not %s; the call goes on untraced", what, exc_info=True)


def _error_type(error: BaseException) -> str:
    return type(error).__qualname__


def start(router: Router, decision: Decision, *, stream: bool = False) -> Decision:
    """`decision` carrying the started span of its call; unchanged when no tracing is configured."""
    if decision.trace is not None:  # already traced: one span per call
        return decision
    name, span = decision.chosen, None
    try:
        tracer = _tracer()
        if tracer is None:
            return decision
        span = tracer.start_span(f"chat {name}", kind=_api.SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": name,
            "omniroute.decision_id": decision.id,
            "omniroute.lambda": decision.lam,
            "omniroute.stream": stream,
        })
        if not span.get_span_context().is_valid:  # no provider configured: the API's no-op span
            return decision
        if span.is_recording():
            attributes: dict[str, Any] = {
                "omniroute.cost.estimated_usd": decision.cost[name],
                "omniroute.reserved_usd": decision.reserved,
            }
            _put(attributes, "gen_ai.provider.name", router.candidate(name).provider)
            _put(attributes, "gen_ai.request.max_tokens", decision.output_cap)
            _put(attributes, "omniroute.scope", decision.scope)
            span.set_attributes(attributes)
    except Exception:
        _failed("start the call's span")
        if span is not None:
            CallSpan(span)._end()
        return decision
    return replace(decision, trace=CallSpan(span))


def _put(attributes: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:  # an attribute is left out rather than set to None (which OpenTelemetry refuses)
        attributes[key] = value


class _Current:
    """Attaches a span to the current context for a `with` block (a class, not a generator: it is
    entered around every streamed chunk, and lets StopIteration through untouched)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Any) -> None:
        self._span = span
        self._token: Any = None

    def __enter__(self) -> None:
        try:
            self._token = _context.attach(_api.set_span_in_context(self._span))
        except Exception:
            _failed("make the call's span current")

    def __exit__(self, *exc_info: Any) -> None:
        if self._token is not None:
            _context.detach(self._token)  # which logs, never raises, a failure of its own


class CallSpan:
    """The span of one routed call (ended once, by its settlement or its last failure)."""

    __slots__ = ("span", "_ended")

    def __init__(self, span: Any) -> None:
        self.span = span
        self._ended = False

    def current(self) -> AbstractContextManager[None]:
        """This span made current while a candidate's client runs, so that the client's spans nest under it."""
        return _Current(self.span)

    def attempt_failed(self, attempt: Attempt, number: int) -> None:
        """Record a failed attempt (number 0 is the first) as an event."""
        try:
            self.span.add_event("omniroute.attempt.failed", {
                "gen_ai.request.model": attempt.candidate,
                "error.type": _error_type(attempt.error),
                "omniroute.error.kind": attempt.kind,
                "omniroute.attempt": number,
            })
        except Exception:
            _failed("record a failed attempt")

    def failed(self, error: BaseException, tried: Sequence[str]) -> None:
        """End the span of a call that produced no answer: status ERROR, error.type the error's class."""
        if self._ended:
            return
        try:
            self.span.set_attributes({"error.type": _error_type(error), "omniroute.candidates_tried": list(tried)})
            self.span.set_status(_api.Status(_api.StatusCode.ERROR, str(error)[:500]))
        except Exception:
            _failed("describe a failed call on its span")
        self._end()

    def settled(
        self, router: Router, decision: Decision, settlement: Settlement, interrupted: BaseException | None = None
    ) -> None:
        """End the span of a settled call with its usage (tokens) and costs (USD); `interrupted`: a
        stream cut short after its first chunk (by a provider error, which is the call's ERROR, or
        by its reader)."""
        if self._ended:
            return
        try:
            name, usage = decision.chosen, settlement.usage
            attributes: dict[str, Any] = {
                "gen_ai.response.model": name,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "omniroute.cost.estimated_usd": decision.cost[name],
                "omniroute.cost.actual_usd": settlement.cost_usd,
                "omniroute.cost.overrun_usd": settlement.overrun_usd,
                "omniroute.reserved_usd": decision.reserved,
                "omniroute.candidates_tried": [*decision.failed, name],
                "omniroute.usage_source": settlement.usage_source,
            }
            if usage.cache_read_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
            if usage.cache_write_tokens:
                attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
            _put(attributes, "gen_ai.provider.name", router.candidate(name).provider)
            _put(attributes, "omniroute.remaining_usd", settlement.remaining_usd)
            if interrupted is not None:
                attributes["omniroute.interrupted_by"] = _error_type(interrupted)
            if isinstance(interrupted, Exception):
                attributes["error.type"] = _error_type(interrupted)
                self.span.set_status(_api.Status(_api.StatusCode.ERROR, str(interrupted)[:500]))
            self.span.set_attributes(attributes)
        except Exception:
            _failed("describe a settled call on its span")
        self._end()

    def _end(self) -> None:
        self._ended = True  # settling twice (which charges once) must not end the span twice
        try:
            self.span.end()
        except Exception:
            _failed("end the call's span")
