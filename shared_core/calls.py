"""Calling the chosen candidate with fallbacks: the one loop both framework adapters use."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from .candidates import Candidate
from .fallbacks import AllCandidatesFailed, Attempt, ErrorKind, classify, falls_back
from .pricing import Usage, usage_from_report
from .router import Decision, Router
from .tokens import count_tokens

__all__ = [
    "call_with_fallbacks", "acall_with_fallbacks", "FallbackStream", "Settlement", "settle_interrupted", "settle_usage",
]

logger = logging.getLogger("omniroute")

logger = logging.getLogger("omniroute")

T = TypeVar("T")
C = TypeVar("C")


def _fall_back(router: Router, decision: Decision, error: Exception, attempts: list[Attempt]) -> Decision:
    """The decision for the next candidate after `error`, or raise: the error itself when the next
    candidate would repeat it (or none was tried after it), AllCandidatesFailed when all failed."""
    attempt = Attempt(decision.chosen, classify(error), error)
    attempts.append(attempt)
    level = logging.ERROR if attempt.kind == ErrorKind.MISCONFIGURED else logging.WARNING
    if not falls_back(attempt.kind):
        router.release(decision)
        logger.warning("candidate %s failed (%s: %s: %s); not falling back: the next candidate would fail too",
                       decision.chosen, attempt.kind, type(error).__name__, error)
        raise error
    following = router.reroute(decision, error)
    if following is None:
        logger.log(level, "candidate %s failed (%s: %s: %s); no candidate left to fall back to",
                   decision.chosen, attempt.kind, type(error).__name__, error)
        if len(attempts) == 1:
            raise error
        raise AllCandidatesFailed(attempts) from error
    logger.log(level, "candidate %s failed (%s: %s: %s); falling back to %s",
               decision.chosen, attempt.kind, type(error).__name__, error, following.chosen)
    return following


def call_with_fallbacks(
    router: Router, decision: Decision, call: Callable[[Candidate, Decision], T]
) -> tuple[T, Decision]:
    """Run `call` on the chosen candidate; on a failure that another candidate could avoid (see
    `fallbacks.classify`), release and retry the next-best.

    Returns the result and the decision that produced it (still reserved: the caller settles it
    with the usage it reads from the result; its `failures` record every failed attempt). Raises
    an error the next candidate would repeat at once, the only error when no other candidate was
    tried, and AllCandidatesFailed (each candidate's error) when every one tried failed; a
    cancellation or interrupt releases the reservation and propagates at once.
    """
    attempts: list[Attempt] = []
    while True:
        try:
            return call(router.candidate(decision.chosen), decision), decision
        except Exception as error:
            decision = _fall_back(router, decision, error, attempts)
        except BaseException:
            router.release(decision)
            raise


async def acall_with_fallbacks(
    router: Router, decision: Decision, call: Callable[[Candidate, Decision], Awaitable[T]]
) -> tuple[T, Decision]:
    """The async form of call_with_fallbacks (same decisions, same ledger calls)."""
    attempts: list[Attempt] = []
    while True:
        try:
            return await call(router.candidate(decision.chosen), decision), decision
        except Exception as error:
            decision = _fall_back(router, decision, error, attempts)
        except BaseException:
            router.release(decision)
            raise


class FallbackStream(Generic[C]):
    """Chunks from the chosen candidate's stream, falling back to the next-best before the first.

    Once a chunk has been yielded the answer is committed to that candidate: a later error
    propagates, and the caller settles what was produced. `decision` is the one that streamed.
    Iterate it once, with `for` (sync) or `async for` (when `start` returns an async iterator).
    """

    def __init__(self, router: Router, decision: Decision, start: Callable[[Candidate, Decision], Any]) -> None:
        self.router = router
        self.decision = decision
        self._start = start
        self._attempts: list[Attempt] = []

    def _fail(self, error: Exception) -> None:
        self.decision = _fall_back(self.router, self.decision, error, self._attempts)

    def __iter__(self) -> Iterator[C]:
        while True:
            try:
                chunks = iter(self._start(self.router.candidate(self.decision.chosen), self.decision))
                first = next(chunks)
                break
            except StopIteration:
                return
            except Exception as error:
                self._fail(error)
            except BaseException:
                self.router.release(self.decision)
                raise
        yield first
        yield from chunks

    async def __aiter__(self) -> AsyncIterator[C]:
        while True:
            try:
                chunks = self._start(self.router.candidate(self.decision.chosen), self.decision).__aiter__()
                first = await chunks.__anext__()
                break
            except StopAsyncIteration:
                return
            except Exception as error:
                self._fail(error)
            except BaseException:
                self.router.release(self.decision)
                raise
        yield first
        async for chunk in chunks:
            yield chunk


@dataclass(frozen=True)
class Settlement:
    """What one finished call was charged: its usage, its cost, any overrun, and the money left after it.

    `usage_source` says where the token counts came from: "provider" (its own report), "counted"
    (OmniRoute's tiktoken count: the provider reported nothing) or "partial" (one total reported,
    the other counted). `overrun_usd` is what the call cost beyond its reservation.
    """

    usage: Usage
    cost_usd: float
    remaining_usd: float | None
    overrun_usd: float = 0.0
    usage_source: str = "provider"

    @property
    def input_tokens(self) -> int:
        """Input (prompt) tokens charged."""
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int:
        """Output (completion) tokens charged."""
        return self.usage.output_tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary for response metadata."""
        return {
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "usage": self.usage.to_dict(),
            "usage_source": self.usage_source,
            "actual_cost_usd": self.cost_usd,
            "overrun_usd": self.overrun_usd,
            "remaining_usd": self.remaining_usd,
        }


def settle_usage(router: Router, decision: Decision, report: Any = None, output_text: str = "") -> Settlement:
    """Settle a finished call with the usage its provider reported, counting what it did not.

    `report` is a `Usage`, or any token report `pricing.usage_from_report` reads (a LangChain
    `usage_metadata`, an OpenAI or Anthropic `usage`), or None. A missing input total is the
    router's own count of the request; a missing output total is `output_text` counted with the
    chosen candidate's encoding. Settling twice charges once.
    """
    if isinstance(report, Usage):
        usage, source = report, "provider"
    else:
        reported = usage_from_report(report)
        has_input = reported is not None and reported.has_input
        has_output = reported is not None and reported.has_output
        usage = reported.usage if reported is not None else Usage()
        if not (has_input and has_output):
            fill: dict[str, int] = {}
            if not has_input:
                fill["input_tokens"] = decision.input_tokens[decision.chosen] + usage.input_tokens
            if not has_output:
                counted = count_tokens(output_text, router.candidate(decision.chosen).encoding)
                fill["output_tokens"] = max(counted, usage.reasoning_tokens)
            usage = replace(usage, **fill)
        source = "provider" if has_input and has_output else "partial" if has_input or has_output else "counted"
    charge = router.commit(decision, usage)
    remaining = router.remaining(decision.scope) if decision.scopes else None
    return Settlement(usage, charge.cost_usd, remaining, charge.overrun_usd, source)


def settle_interrupted(
    router: Router, decision: Decision, error: BaseException, report: Any = None, output_text: str = ""
) -> Settlement:
    """Settle a stream that stopped after its first chunk without finishing.

    A provider error (an `Exception`) ended the provider's work: what it produced is charged, from
    its report or counted (as settle_usage). The reader stopping (GeneratorExit, cancellation,
    an interrupt) did not: the provider may go on writing — and billing — up to the cap, so the
    whole worst case reserved for the call is charged (`usage_source` "reserved"), never less
    than the bill.
    """
    if isinstance(error, Exception):
        return settle_usage(router, decision, report, output_text)
    name = decision.chosen
    cap = decision.output_caps.get(name) or router.candidate(name).max_output_tokens
    usage = Usage(input_tokens=decision.input_tokens[name], output_tokens=cap)
    charge = router.commit(decision, cost=router.candidate(name).worst_case_cost(usage.input_tokens, cap))
    logger.info("the reader stopped a stream of %s early (%s); charged its worst case, %.9g USD, since the "
                "provider may have kept writing", name, type(error).__name__, charge.cost_usd)
    remaining = router.remaining(decision.scope) if decision.scopes else None
    return Settlement(usage, charge.cost_usd, remaining, charge.overrun_usd, "reserved")
