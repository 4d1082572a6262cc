"""Routing work off the event loop: decisions and ledger calls in worker threads, concurrent ones coalesced."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .quality.memory import SHARED_ROWS
from .router import SharedReads

if TYPE_CHECKING:
    from .router import Decision, Router

__all__ = ["ROUTING_THREADS", "decide_off_loop", "off_loop", "reserve_off_loop"]

logger = logging.getLogger("omniroute")

T = TypeVar("T")
Tag = TypeVar("Tag")

# The async paths run every router call (decide, reroute, commit, release, settlement) in these
# threads, so that neither the decision's CPU time nor a ledger round trip holds the event loop.
# Threads of routing's own rather than the loop's default executor (asyncio.to_thread): that one
# also resolves host names for new connections and runs LangChain's sync callback handlers, which
# a burst of queued decisions must not starve; and it is sized for the cores, not for routing.
# Decisions are mostly CPU under the GIL: each more thread wanting it is one more the event loop
# waits behind, while more threads overlap more ledger round trips. Measured on 2 cores, 200
# concurrent ainvoke, interleaved (median loop stall without GC pauses; wall): memory ledger 1, 2,
# 4 threads: 20, 32, 46 ms; 1.39, 1.38, 1.50 s. Redis: 35, 32, 53 ms; 3.7, 3.4, 2.7 s. Two keep
# the stall near its least on both (benchmarks/async_loop.py --threads N). Read when the workers are made.
#: Worker threads that run routing and ledger calls for the async entry points.
ROUTING_THREADS = 2

#: The most queued calls one worker takes at once: decisions among them are predicted together.
BATCH = SHARED_ROWS

# Concurrent calls are coalesced: a worker takes what is queued (its share, when both are idle),
# predicts every decision among it in one batch (one embedding, one neighbour search: a
# fraction of their cost one by one), finishes each decision and runs each ledger call in its
# caller's context, then hands the results back to each event loop at once. A decision made in a
# batch is the decision made alone: each request is checked, priced and reserved on its own, and
# the predictors give a prompt the same numbers in a batch as by itself — bit for bit for the
# prior, k-NN and cluster ones; to the last bit of a matrix product, summed in another order, for
# the others (tests/test_offload.py).


class _Job:
    """One call waiting for a worker: what to run, in whose context, and where its result goes."""

    __slots__ = ("context", "error", "fn", "future", "ran", "release", "result", "router")

    def __init__(
        self, fn: Callable[[], Any], future: asyncio.Future[Any] | None, *,
        release: Callable[[Any], None] | None = None, router: Router | None = None,
    ) -> None:
        # The caller's context goes along: OpenTelemetry's current span, LangChain's callback and
        # config variables, a held LlamaIndex selection are what they would be inline.
        self.context = contextvars.copy_context()
        self.fn = fn
        self.future = future
        self.release = release  # undoes the result when nobody is left to take it (a reservation)
        self.router = router  # a decision: fn() gives (tag, decide's keyword arguments)
        self.ran = False
        self.result: Any = None
        self.error: BaseException | None = None

    def skipped(self) -> bool:
        """A reservation whose caller was cancelled before a worker took it is not made at all."""
        return self.release is not None and self.future is not None and self.future.cancelled()


class _Workers:
    """The queue of calls and routing's threads that drain it (at most ROUTING_THREADS at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._busy = 0
        self._threads = ROUTING_THREADS
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="omniroute-routing")
        self.pid = os.getpid()

    def put(self, job: _Job) -> None:
        with self._lock:
            self._queue.append(job)
            if self._busy >= self._threads:
                return  # a busy worker takes it when it finishes what it has
            self._busy += 1
        self._pool.submit(self._drain)

    def _take(self) -> list[_Job]:
        with self._lock:
            if not self._queue:
                self._busy -= 1
                return []
            # A share, not the whole queue: the other worker overlaps its ledger round trips with ours.
            share = min(BATCH, math.ceil(len(self._queue) / self._threads))
            return [self._queue.popleft() for _ in range(share)]

    def _drain(self) -> None:
        while jobs := self._take():
            try:
                _run(jobs)
            except BaseException as error:  # never expected (each call's errors are its own): fail, never hang
                logger.exception("routing's worker failed; the calls it held fail with its error")
                for job in jobs:
                    job.error = job.error or error
            try:
                _deliver(jobs)
            except BaseException:  # never expected; the worker must live on for the calls queued after
                logger.exception("routing's worker could not hand back the results of %d calls", len(jobs))


_workers: _Workers | None = None
_workers_lock = threading.Lock()


def _dispatch(job: _Job) -> None:
    """Queue `job` for routing's workers."""
    global _workers
    with _workers_lock:
        # A forked child inherits the queue but not its threads: work put there would never run.
        if _workers is None or _workers.pid != os.getpid():
            _workers = _Workers()
        workers = _workers
    workers.put(job)


def _run(jobs: list[_Job]) -> None:
    """Run `jobs` here, each in its caller's context; the decisions on one router predicted in one batch."""
    batches: dict[int, list[_Job]] = {}
    for job in jobs:
        if job.skipped():
            continue
        if job.router is None:
            _attempt(job, job.fn)
        else:
            _attempt(job, functools.partial(_ask, job))
            if job.error is None:
                batches.setdefault(id(job.router), []).append(job)
    for batch in batches.values():
        _decide(batch)


def _attempt(job: _Job, step: Callable[[], Any]) -> None:
    job.ran = True
    try:
        job.result = job.context.run(step)
    except BaseException as error:  # handed to the awaiting caller, raised there unchanged
        job.error = error


def _ask(job: _Job) -> tuple[Any, Any]:
    tag, arguments = job.fn()
    return tag, job.router._ask(**arguments)  # type: ignore[union-attr]


def _decide(batch: list[_Job]) -> None:
    """Predict for every request of `batch` at once, then finish each decision on its own."""
    router = batch[0].router
    assert router is not None
    try:
        texts = [job.result[1].text for job in batch]
        lineup, quality, lengths = router.pool.predict(router.pool.features(texts))
    except Exception as error:
        if len(batch) == 1:
            batch[0].error = error
            return
        # Perhaps one request's own (a prompt over an embedding API's limit): each is predicted alone.
        for job in batch:
            _decide([job])
        return
    except BaseException as error:
        for job in batch:
            job.error = error
        return
    # The budgets are read once for the batch, not once per decision, and its holds made together.
    reads = SharedReads(defer_holds=len(batch) > 1)
    for i, job in enumerate(batch):
        tag, ask = job.result
        _attempt(job, lambda: (tag, router._decide_predicted(ask, lineup, quality[i], lengths[i], reads)))  # noqa: B023
    if reads.deferred:
        _hold(router, batch, reads)


def _hold(router: Router, batch: list[_Job], reads: SharedReads) -> None:
    """Make the holds `batch`'s decisions planned in one ledger call, then finish each decision in
    its caller's context: routed, decided again alone when its hold was refused, or the ledger's error."""
    deferred = reads.deferred or []
    try:
        outcomes: list[Exception | None] = router._hold_deferred(reads)
    except BaseException as error:  # the ledger call itself failed: no decision of the batch is known to hold
        outcomes = [error] * len(deferred)  # type: ignore[list-item]
    answered = {id(planned.decision): (planned, outcome) for planned, outcome in zip(deferred, outcomes, strict=True)}
    for job in batch:
        found = None if job.error is not None else answered.get(id(job.result[1]))
        if found is not None:
            tag = job.result[0]
            _attempt(job, lambda: (tag, router._confirm(*found)))  # noqa: B023


def _deliver(jobs: list[_Job]) -> None:
    """Hand each job's outcome to its event loop: one wake-up from this thread per loop and batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in jobs:
        if job.future is None:
            if job.error is not None:  # nobody is left to raise it to
                logger.error("a routing call whose caller had gone failed", exc_info=job.error)
        else:
            by_loop.setdefault(job.future.get_loop(), []).append(job)
    for loop, waiting in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_futures, waiting)
        except RuntimeError:  # the loop was closed meanwhile: nobody will take these results
            for job in waiting:
                _orphaned(job)


#: Results handed back per turn of the event loop: each wakes a caller, whose next step then runs
#: before the next 16 are handed back, so a batch of 64 never holds the loop's other work (a timer,
#: a socket) behind 64 callers at once.
_PACE = 16


def _settle_futures(jobs: list[_Job]) -> None:
    if len(jobs) > _PACE:
        asyncio.get_running_loop().call_soon(_settle_futures, jobs[_PACE:])
        jobs = jobs[:_PACE]
    for job in jobs:
        future = job.future
        assert future is not None
        try:
            if future.cancelled():
                _orphaned(job)
            elif job.error is not None:
                future.set_exception(_raisable(job.error))
            else:
                future.set_result(job.result)
        except Exception:  # never expected; the other callers of the batch must still get theirs
            logger.exception("could not hand a routing call's outcome back to its caller")


def _raisable(error: BaseException) -> BaseException:
    """The error as a future can raise it: a StopIteration (which futures refuse) as the RuntimeError
    a coroutine would turn it into."""
    if isinstance(error, StopIteration):
        wrapped = RuntimeError(f"a routing call raised {type(error).__name__}")
        wrapped.__cause__ = error
        return wrapped
    return error


def _orphaned(job: _Job) -> None:
    """Undo what a call made for a caller that was cancelled while it ran (a reservation)."""
    if job.release is None or not job.ran or job.error is not None:
        return  # nothing to undo: not a reservation, never made, or it failed
    release, made = job.release, job.result

    def undo() -> None:
        try:
            release(made)
        except Exception:  # nobody is left to raise it to; the hold lapses with its TTL
            logger.exception("could not release the reservation of a call cancelled while it was routed")

    _dispatch(_Job(undo, None))


def _keep(context: contextvars.Context) -> None:
    """Set in the caller's context what the call set in its copy, as if it had run inline (a
    LlamaIndex selection held or claimed by the call must be seen by the caller's next one)."""
    for var, value in context.items():
        if var.get(_UNSET) is not value:
            var.set(value)


_UNSET: Any = object()


async def off_loop(fn: Callable[[], T]) -> T:
    """fn() — ledger work that must be done once begun (commit, release, a settlement) — in
    routing's worker threads, the event loop free meanwhile; its result, or its exception unchanged.

    A cancellation that arrives meanwhile is delivered once fn() has finished (fn's own exception
    becomes its cause), as it would be after the synchronous call: the books never depend on when
    a task was cancelled, and whatever the caller does next (a release in a `finally`) comes after.
    """
    job = _Job(fn, asyncio.get_running_loop().create_future())
    future = job.future
    assert future is not None
    _dispatch(job)
    cancelled: BaseException | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as error:
            cancelled = cancelled or error
        except BaseException:
            if not future.done():
                raise
    _keep(job.context)
    if cancelled is not None:
        raise cancelled from future.exception()
    return future.result()  # type: ignore[no-any-return]


async def reserve_off_loop(fn: Callable[[], T], release: Callable[[T], None]) -> T:
    """fn() — a call that reserves money (`Router.decide`, or an adapter's routing step around it)
    — in routing's worker threads, the event loop free meanwhile; its result, or its exception unchanged.

    A caller cancelled meanwhile gets the CancelledError at once, and the reservation made for
    nobody is undone: `release(result)` runs in a worker thread once fn() has returned (a call
    still queued is not made at all). Context variables fn() sets are kept in the caller's context.
    """
    return await _reserved(_Job(fn, asyncio.get_running_loop().create_future(), release=release))  # type: ignore[no-any-return]


async def decide_off_loop(
    router: Router,
    prepare: Callable[[], tuple[Tag, Mapping[str, Any]]],
    release: Callable[[tuple[Tag, Decision]], None],
) -> tuple[Tag, Decision]:
    """`router.decide(**arguments)` for `(tag, arguments) = prepare()`, in routing's worker threads:
    (tag, the decision). As `reserve_off_loop` (cancellation, context, errors unchanged); decisions
    asked for together are predicted in one batch, each the decision it would be alone."""
    job = _Job(prepare, asyncio.get_running_loop().create_future(), release=release, router=router)
    return await _reserved(job)  # type: ignore[no-any-return]


async def _reserved(job: _Job) -> Any:
    future = job.future
    assert future is not None
    _dispatch(job)
    try:
        result = await future  # a cancellation cancels the future: the result, if made, is undone
    except asyncio.CancelledError:
        if future.done() and not future.cancelled() and future.exception() is None:
            _orphaned(job)  # cancelled after the result came in, before this task resumed to take it
        raise
    except BaseException:  # fn's own error: what it set before raising stays set, as inline
        _keep(job.context)
        raise
    _keep(job.context)
    return result
