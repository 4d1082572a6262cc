"""Calling the chosen candidate with fallbacks: the one loop both framework adapters use."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from . import telemetry
from .budget import LedgerUnavailable
from .candidates import Candidate
from .errors import AttemptTimeout
from .fallbacks import AllCandidatesFailed, Attempt, ErrorKind, classify, falls_back, may_be_billed
from .offload import off_loop, reserve_off_loop
from .pricing import Reported, Usage, usage_from_report
from .router import Charge, Decision, Router
from .tokens import count_tokens

__all__ = [
    "AttemptTimeout", "FallbackStream", "OnFailure", "Settlement", "acall_with_fallbacks",
    "asettle_interrupted", "asettle_usage", "call_with_fallbacks",
    "settle_interrupted", "settle_usage",
]

logger = logging.getLogger("omniroute")

T = TypeVar("T")
C = TypeVar("C")

#: Called with each failed attempt (before the next is tried); may return an awaitable in async code.
OnFailure = Callable[[Attempt], Any]


class _Tries:
    """One request's attempts: the failure policy, the time it has left, and who hears of each failure."""

    def __init__(self, router: Router, on_failure: OnFailure | None) -> None:
        self.router = router
        self.on_failure = on_failure
        self.attempts: list[Attempt] = []
        self.deadline = None if router.deadline_s is None else time.monotonic() + router.deadline_s
        self.charged: set[str] = set()  # decisions whose attempt, given up on, was charged already

    def timeout(self) -> float | None:
        """Seconds the next attempt may take: the per-attempt timeout, within the overall deadline."""
        limits = [self.router.attempt_timeout_s]
        if self.deadline is not None:
            limits.append(max(0.0, self.deadline - time.monotonic()))
        known = [t for t in limits if t is not None]
        return min(known) if known else None

    def fail(self, decision: Decision, error: Exception) -> Decision:
        """Record a failed attempt, tell `on_failure`, and return the next decision (see `next`)."""
        try:
            self._notify(self._record(decision, error), decision)
            return self.next(decision, error)
        except BaseException as raised:
            self.gave_up(decision, raised)
            raise

    async def afail(self, decision: Decision, error: Exception) -> Decision:
        """The async form of fail: an async `on_failure` is awaited; the ledger calls run off the loop."""
        try:
            attempt = self._record(decision, error)
            try:
                if self.on_failure is not None:
                    notified = self.on_failure(attempt)
                    if inspect.isawaitable(notified):
                        await notified
            except BaseException:  # a handler that raises must not leave the attempt's money held
                await off_loop(functools.partial(self.dispose, decision, error))
                raise
            # `next` whole in a worker: the release, the reroute's new reservation and the policy's
            # errors are the synchronous path's own.
            try:
                return await reserve_off_loop(functools.partial(self.next, decision, error), self.router.release)
            except asyncio.CancelledError:
                # Cancelled while `next` waited for a worker, it never ran: the failed attempt is
                # settled here, or its hold would block the budget until it lapsed.
                await off_loop(functools.partial(self.dispose, decision, error))
                raise
        except BaseException as raised:
            self.gave_up(decision, raised)
            raise

    def gave_up(self, decision: Decision, error: BaseException) -> None:
        """End the call's span (if traced) with the error that ends the call unanswered."""
        if decision.trace is not None:
            decision.trace.failed(error, [a.candidate for a in self.attempts] or [decision.chosen])

    def _record(self, decision: Decision, error: Exception) -> Attempt:
        # What `dispose` will charge, known now so that on_failure hears it: the worst case held,
        # when the provider may bill the attempt or it was given up on already (and a budget applies).
        billed = bool(decision.scopes) and (decision.id in self.charged or may_be_billed(error))
        attempt = Attempt(decision.chosen, classify(error), error, decision.reserved if billed else 0.0)
        self.attempts.append(attempt)
        if decision.trace is not None:
            decision.trace.attempt_failed(attempt, len(self.attempts) - 1)
        return attempt

    def _notify(self, attempt: Attempt, decision: Decision) -> Any:
        if self.on_failure is None:
            return None
        try:
            return self.on_failure(attempt)
        except BaseException:  # a handler that raises must not leave the attempt's money held
            self.dispose(decision, attempt.error)
            raise

    def within(self, decision: Decision, fn: Callable[[], T], discard: Callable[[T], None] | None = None) -> T:
        """fn() for `decision`'s attempt, bounded by the time it may take (see `_within`)."""
        return _within(self.timeout(), fn, lambda: self._abandon(decision), discard)

    def _abandon(self, decision: Decision) -> None:
        self._charge_once(decision, "gave up on the call, which goes on in its thread")

    def _charge_once(self, decision: Decision, why: str) -> None:
        if decision.id not in self.charged:
            _charge_unread(self.router, decision, why)
            self.charged.add(decision.id)

    def dispose(self, decision: Decision, error: BaseException, *, release: bool = True) -> None:
        """Settle a failed attempt's hold: its worst case charged when the provider may bill it
        (`may_be_billed`, once), else released — unless `release` is False (a reroute releases it)."""
        if may_be_billed(error):
            self._charge_once(decision, f"its request may have reached the provider ({type(error).__name__})")
        elif release:
            self.router.release(decision)

    def interrupted(self, decision: Decision, error: BaseException) -> None:
        """An attempt stopped from outside while it waited for its answer (a cancelled task, an
        interrupt): its request may have reached the provider, which may bill it, so its worst case
        is charged (once), as for a timeout. A failure to charge is logged: `error` goes on."""
        try:
            self._charge_once(decision, f"interrupted waiting for the answer ({type(error).__name__})")
        except Exception:
            logger.exception("could not charge the attempt of %s that was interrupted", decision.chosen)

    def out_of_time(self) -> bool:
        """Whether the overall deadline has passed: no attempt may start."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def next(self, decision: Decision, error: Exception) -> Decision:
        """The decision for the next candidate after `error`, or raise: the error itself when the
        next candidate would repeat it (or none was tried after it), AllCandidatesFailed when all
        tried failed."""
        attempt = self.attempts[-1]
        level = logging.ERROR if attempt.kind == ErrorKind.MISCONFIGURED else logging.WARNING
        what = f"candidate {decision.chosen} failed ({attempt.kind}: {type(error).__name__}: {error})"
        if not falls_back(attempt.kind):
            self.dispose(decision, error)
            logger.warning("%s; not falling back: the next candidate would fail too", what)
            raise error
        out_of_time = self.out_of_time()
        self.dispose(decision, error, release=out_of_time)  # otherwise the reroute releases it
        following = None if out_of_time else self.router.reroute(decision, error, attempt=attempt)
        if following is not None and self.out_of_time():
            # The deadline passed while the fallback was reserved: an attempt with no time at all
            # would be cancelled unsent (async) or sent unread (sync), and charged either way.
            self.router.release(following)
            following, out_of_time = None, True
        if following is None:
            reason = "the deadline has passed" if out_of_time else "no candidate left to fall back to"
            logger.log(level, "%s; %s", what, reason)
            if len(self.attempts) == 1:
                raise error
            raise AllCandidatesFailed(self.attempts) from error
        logger.log(level, "%s; falling back to %s", what, following.chosen)
        return following


def _charge_unread(router: Router, decision: Decision, why: str) -> None:
    """Commit the worst case held for an attempt whose answer nobody will read — it timed out waiting
    or lost its connection (`may_be_billed`), or goes on unseen in a worker thread: the provider may
    still write and bill it, and the ledger must not count less than the bill. `why` says which, in
    the log."""
    if decision.scopes:
        router.commit(decision, cost=decision.reserved)
        logger.info("%s (%s): charged its worst case, %.9g USD, which the provider may still bill",
                    why, decision.chosen, decision.reserved)


def _within(
    timeout: float | None, fn: Callable[[], T], abandon: Callable[[], None], discard: Callable[[T], None] | None = None,
) -> T:
    """fn() — in a worker thread when a timeout applies, so that a hung call can be given up on.

    A call given up on (the timeout passed, or the waiting thread was interrupted) cannot be
    stopped: it finishes in its thread, unseen, so `abandon` charges it first, and `discard` is
    given what it returns late (a stream to close) in that thread, rather than leaving it to the
    garbage collector, which would close it in whatever thread it runs in — one that may hold
    the same connection pool's lock. The client's own timeout is what ends its connection; set one too.
    """
    if timeout is None:
        return fn()
    done = threading.Event()
    lock = threading.Lock()
    outcome: list[Any] = []
    given_up = False

    def run() -> None:
        try:
            result: tuple[bool, Any] = (True, fn())
        except BaseException as error:  # handed to the caller's thread below
            result = (False, error)
        with lock:
            late = given_up
            if not late:
                outcome.append(result)
        done.set()
        if late and result[0] and discard is not None:
            try:
                discard(result[1])
            except Exception:  # the caller has gone; nothing to hand this to but the log
                logger.exception("could not close the late result of an attempt given up on")

    def give_up() -> bool:
        """True when the call is given up on; False when it finished just now after all."""
        nonlocal given_up
        with lock:
            given_up = not outcome
            return given_up

    context = contextvars.copy_context()  # callbacks and tracing follow the call into the thread
    threading.Thread(target=context.run, args=(run,), name="omniroute-attempt", daemon=True).start()
    try:
        done.wait(timeout)
        late = give_up()
    except BaseException:  # interrupted: nobody will read the answer, even one that came just now
        if not give_up():
            ok, value = outcome[0]
            if ok and discard is not None:
                discard(value)
        abandon()
        raise
    if late:
        abandon()
        raise AttemptTimeout(f"no answer within {timeout:.3g} s")
    ok, value = outcome[0]
    if ok:
        return value
    raise value


async def _awithin(timeout: float | None, awaitable: Awaitable[T]) -> T:
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AttemptTimeout(f"no answer within {timeout:.3g} s") from None


def call_with_fallbacks(
    router: Router, decision: Decision, call: Callable[[Candidate, Decision], T], *,
    on_failure: OnFailure | None = None,
) -> tuple[T, Decision]:
    """Run `call` on the chosen candidate; on a failure that another candidate could avoid (see
    `fallbacks.classify`), release it — or charge its worst case when its request may have reached
    the provider (it timed out waiting for the answer or lost its connection:
    `fallbacks.may_be_billed`) — and retry the next-best.

    Returns the result and the decision that produced it (still reserved: the caller settles it
    with the usage it reads from the result; its `failures` record every failed attempt). Each
    attempt is bounded by the router's `attempt_timeout_s` and all of them by its `deadline_s`
    (AttemptTimeout, which falls back; an attempt given up on goes on in its worker thread, so its
    worst case is charged). `on_failure` hears of each failed attempt. Raises an
    error the next candidate would repeat at once, the only error when no other candidate was
    tried, and AllCandidatesFailed (each candidate's error) when every one tried failed; a
    cancellation or interrupt while a candidate is called charges that attempt's worst case (the
    provider may have the request, and bill it) and propagates at once.
    """
    tries = _Tries(router, on_failure)
    decision = telemetry.start(router, decision)  # ended by the settlement, or below when no answer comes
    while True:
        try:
            candidate = router.candidate(decision.chosen)
            with _current(decision):
                # The lambda runs before the loop moves on: it sees this iteration's candidate and decision.
                return tries.within(decision, lambda: call(candidate, decision)), decision  # noqa: B023
        except Exception as error:
            decision = tries.fail(decision, error)
        except BaseException as error:
            tries.interrupted(decision, error)
            tries.gave_up(decision, error)
            raise


async def acall_with_fallbacks(
    router: Router, decision: Decision, call: Callable[[Candidate, Decision], Awaitable[T]], *,
    on_failure: OnFailure | None = None,
) -> tuple[T, Decision]:
    """The async form of call_with_fallbacks (same decisions, same ledger calls, made in routing's
    worker threads: see `off_loop`); `on_failure` may be async."""
    tries = _Tries(router, on_failure)
    decision = telemetry.start(router, decision)
    while True:
        try:
            with _current(decision):
                return await _awithin(tries.timeout(), call(router.candidate(decision.chosen), decision)), decision
        except Exception as error:
            decision = await tries.afail(decision, error)
        except BaseException as error:
            try:
                await off_loop(functools.partial(tries.interrupted, decision, error))
            finally:
                tries.gave_up(decision, error)
            raise


class FallbackStream(Generic[C]):
    """Chunks from the chosen candidate's stream, falling back to the next-best before the first.

    Once a chunk has been yielded the answer is committed to that candidate: a later error
    propagates, and the caller settles what was produced. The router's `attempt_timeout_s` and
    `deadline_s` bound the wait for the first chunk. `decision` is the one that streamed. Iterate
    it once, with `for` (sync) or `async for` (when `start` returns an async iterator).
    """

    def __init__(
        self, router: Router, decision: Decision, start: Callable[[Candidate, Decision], Any], *,
        on_failure: OnFailure | None = None,
    ) -> None:
        self.router = router
        self.decision = decision
        self._start = start
        self._tries = _Tries(router, on_failure)

    def __iter__(self) -> Iterator[C]:
        self.decision = telemetry.start(self.router, self.decision, stream=True)
        while True:
            try:
                candidate, decision = self.router.candidate(self.decision.chosen), self.decision

                def begin() -> tuple[Iterator[C], C]:  # called at once below, within this iteration
                    chunks = iter(self._start(candidate, decision))  # noqa: B023
                    return chunks, next(chunks)

                with _current(decision):
                    chunks, first = self._tries.within(decision, begin, _close_stream)
                break
            except StopIteration:
                return
            except Exception as error:
                self.decision = self._tries.fail(self.decision, error)
            except BaseException as error:
                self._tries.interrupted(self.decision, error)
                self._tries.gave_up(self.decision, error)
                raise
        yield first
        if self.decision.trace is None:
            yield from chunks
            return
        try:  # each chunk read with the span current, as the client reads its response then
            while True:
                with _current(self.decision):
                    chunk = next(chunks, _DONE)
                if chunk is _DONE:
                    return
                yield chunk
        finally:
            close = getattr(chunks, "close", None)  # as `yield from` would on an early close
            if close is not None:
                close()

    async def __aiter__(self) -> AsyncIterator[C]:
        self.decision = telemetry.start(self.router, self.decision, stream=True)
        while True:
            try:
                with _current(self.decision):
                    chunks = self._start(self.router.candidate(self.decision.chosen), self.decision).__aiter__()
                    first = await _awithin(self._tries.timeout(), chunks.__anext__())
                break
            except StopAsyncIteration:
                return
            except Exception as error:
                self.decision = await self._tries.afail(self.decision, error)
            except BaseException as error:
                try:
                    await off_loop(functools.partial(self._tries.interrupted, self.decision, error))
                finally:
                    self._tries.gave_up(self.decision, error)
                raise
        yield first
        while True:
            try:
                with _current(self.decision):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            yield chunk


_DONE: Any = object()


def _close_stream(started: tuple[Iterator[Any], Any]) -> None:
    """Close a stream that began after its attempt was given up on (its connection goes back now)."""
    close = getattr(started[0], "close", None)
    if close is not None:
        close()


def _current(decision: Decision) -> contextlib.AbstractContextManager[Any]:
    """The decision's span made current (a provider client's spans nest under it); nothing untraced."""
    return _NOTHING if decision.trace is None else decision.trace.current()


_NOTHING = contextlib.nullcontext()


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


def _remaining(router: Router, decision: Decision, charge: Charge) -> float | None:
    """Money left in the decision's scope for the response metadata: what the commit read, else (a
    commit kept for later) what the ledger says now; None without a budget or a ledger."""
    if charge.remaining_usd is not None or not decision.scopes:
        return charge.remaining_usd
    try:
        return router.remaining(decision.scope)
    except LedgerUnavailable:  # the answer was paid for; its figures must not cost the caller the answer
        return None


def settle_usage(router: Router, decision: Decision, report: Any = None, output_text: str = "") -> Settlement:
    """Settle a finished call with the usage its provider reported, counting what it did not.

    `report` is a `Usage`, any token report `pricing.usage_from_report` reads (a LangChain
    `usage_metadata`, an OpenAI or Anthropic `usage`) or what it read (a `Reported`), or None. A
    missing input total is the router's own count of the request; a missing output total is
    `output_text` counted with the chosen candidate's encoding. Settling twice charges once.
    """
    return _traced(router, decision, lambda: _settle_usage(router, decision, report, output_text))


def _settle_usage(router: Router, decision: Decision, report: Any, output_text: str) -> Settlement:
    if isinstance(report, Usage):
        usage, source = report, "provider"
    else:
        reported = report if isinstance(report, Reported) else usage_from_report(report)
        has_input = reported is not None and reported.has_input
        has_output = reported is not None and reported.has_output
        usage = reported.usage if reported is not None else Usage()
        if not (has_input and has_output):
            fill: dict[str, int] = {}
            if not has_input:
                fill["input_tokens"] = decision.input_tokens[decision.chosen] + usage.input_tokens
            if not has_output:
                counted = count_tokens(output_text, router.priced(decision).encoding)
                fill["output_tokens"] = max(counted, usage.reasoning_tokens)
            usage = replace(usage, **fill)
        source = "provider" if has_input and has_output else "partial" if has_input or has_output else "counted"
    charge = router.commit(decision, usage)
    return Settlement(usage, charge.cost_usd, _remaining(router, decision, charge), charge.overrun_usd, source)


async def asettle_usage(router: Router, decision: Decision, report: Any = None, output_text: str = "") -> Settlement:
    """settle_usage in routing's worker threads (see `off_loop`): the event loop goes on meanwhile."""
    return await off_loop(functools.partial(settle_usage, router, decision, report, output_text))


def settle_interrupted(
    router: Router, decision: Decision, error: BaseException, report: Any = None, output_text: str = ""
) -> Settlement:
    """Settle a stream that stopped after its first chunk without finishing.

    A provider error (an `Exception`) ended the provider's work: what it produced is charged, from
    its report or counted (as settle_usage). The reader stopping (GeneratorExit, cancellation,
    an interrupt), timing out waiting for the next chunk or losing the connection
    (`fallbacks.may_be_billed`) did not: the provider may go on writing — and billing — up to the
    cap, so the whole worst case reserved for the call is charged (`usage_source` "reserved"),
    never less than the bill.
    """
    if isinstance(error, Exception) and not may_be_billed(error):
        return _traced(router, decision, lambda: _settle_usage(router, decision, report, output_text), error)
    return _traced(router, decision, lambda: _charge_worst_case(router, decision, error), error)


async def asettle_interrupted(
    router: Router, decision: Decision, error: BaseException, report: Any = None, output_text: str = ""
) -> Settlement:
    """settle_interrupted in routing's worker threads (see `off_loop`): the event loop goes on meanwhile."""
    return await off_loop(functools.partial(settle_interrupted, router, decision, error, report, output_text))


def _charge_worst_case(router: Router, decision: Decision, error: BaseException) -> Settlement:
    name, candidate = decision.chosen, router.priced(decision)
    cap = decision.output_caps.get(name) or candidate.max_output_tokens
    usage = Usage(input_tokens=decision.input_tokens[name], output_tokens=cap)
    charge = router.commit(decision, cost=candidate.worst_case_cost(usage.input_tokens, cap))
    logger.info("a stream of %s stopped early unread (%s); charged its worst case, %.9g USD, since the "
                "provider may have kept writing", name, type(error).__name__, charge.cost_usd)
    return Settlement(usage, charge.cost_usd, _remaining(router, decision, charge), charge.overrun_usd, "reserved")


def _traced(
    router: Router, decision: Decision, settle: Callable[[], Settlement], interrupted: BaseException | None = None
) -> Settlement:
    """settle(), ending the call's span (when traced) with its settlement, or with the error that stopped it."""
    if decision.trace is None:
        return settle()
    try:
        settlement = settle()
    except BaseException as error:
        decision.trace.failed(error, [*decision.failed, decision.chosen])
        raise
    decision.trace.settled(router, decision, settlement, interrupted)
    return settlement
