"""The async entry points never hold the event loop for routing or the ledger, and keep the same books.

Real provider clients (langchain-openai, llama-index-llms-openai) talk to the local provider in
tests/provider_server.py. A ledger that takes 50 ms per reservation and commit stands in for a
slow decision: run on the event loop, as the async paths once did, it stalls the loop for
seconds; run in routing's worker threads, the loop keeps ticking.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from lc_fakes import FakeToolChatModel
from lc_fakes import candidate as lc_fake
from ledger_support import STORES, ledger
from li_fakes import CHEAP, EXPENSIVE, UsageLLM
from li_fakes import candidate as li_fake
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.openai import OpenAI

from omniroute_lc import ChatOmniRoute
from omniroute_li import OmniRouteLLM
from shared_core import Budget, Candidate, Router, offload
from shared_core.budget import LedgerUnavailable
from shared_core.stores.memory import MemoryStore

GPT, MINI = "gpt-4o-mini", "gpt-4.1-nano"
PRICES = {GPT: dict(input_price=0.15, output_price=0.6), MINI: dict(input_price=0.1, output_price=0.4)}
EXACT = 1e-9  # USD
SLOW_S = 0.05  # per reservation and per commit of the slow ledger
MESSAGES = [ChatMessage(role="user", content="Say something.")]


@pytest.fixture
def billing(provider):
    """The provider, pricing each model exactly as its Candidate does."""
    for model, prices in PRICES.items():
        provider.configure(model, **prices)
    return provider


# A client that gives up on a request the provider then serves makes an attempt charged its worst
# case and a fallback: the exact books below would not hold. A connection queued behind a burst on
# a loaded 2-core machine must not reach the timeout (the test server listens with a backlog of
# 256; with socketserver's 5 a dropped SYN was retried after 1, 3, 7, 15 s, and once outlasted 40 s).
CLIENT_TIMEOUT_S = 40


def lc_candidates(provider) -> list[Candidate]:
    def model(name: str) -> ChatOpenAI:
        return ChatOpenAI(base_url=provider.openai_url, api_key="test", model=name, max_retries=0,
                          timeout=CLIENT_TIMEOUT_S)
    return [Candidate(name="gpt", model=model(GPT), prior_quality=0.8, **PRICES[GPT]),
            Candidate(name="mini", model=model(MINI), prior_quality=0.6, **PRICES[MINI])]


def li_candidates(provider) -> list[Candidate]:
    def model(name: str) -> OpenAI:
        return OpenAI(api_base=provider.openai_url, api_key="test", model=name, max_retries=0,
                      timeout=CLIENT_TIMEOUT_S)
    return [Candidate(name="gpt", model=model(GPT), prior_quality=0.8, **PRICES[GPT]),
            Candidate(name="mini", model=model(MINI), prior_quality=0.6, **PRICES[MINI])]


class SlowStore(MemoryStore):
    """A memory ledger whose reservations and commits each take SLOW_S (a slow decision, a far ledger)."""

    def _reserve(self, *args: Any) -> None:
        time.sleep(SLOW_S)
        super()._reserve(*args)

    def _commit_books(self, *args: Any) -> Any:
        time.sleep(SLOW_S)
        return super()._commit_books(*args)


class GatedStore(MemoryStore):
    """A memory ledger whose `gated` operation ("reserve" or "commit") waits for `proceed`."""

    def __init__(self, gated: str) -> None:
        super().__init__()
        self.gated = gated
        self.entered, self.proceed, self.released = threading.Event(), threading.Event(), threading.Event()

    def _wait(self, operation: str) -> None:
        if operation == self.gated:
            self.entered.set()
            assert self.proceed.wait(10), "the test never let the gated operation proceed"

    def _reserve(self, *args: Any) -> None:
        self._wait("reserve")
        super()._reserve(*args)

    def _commit_books(self, *args: Any) -> Any:
        self._wait("commit")
        return super()._commit_books(*args)

    def release(self, reservation_id: str) -> bool:
        released = super().release(reservation_id)
        if released:
            self.released.set()
        return released


async def worst_stall(work: Awaitable[Any]) -> tuple[Any, float]:
    """(work's result, the event loop's longest stall in seconds while it ran: a 1 ms ticker's worst
    lateness, less the garbage collector's pauses, which stop every thread whoever triggers them)."""
    stop, ticks, pauses, began = asyncio.Event(), [], [], [0.0]

    async def tick() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            ticks.append((start, time.perf_counter()))

    def collecting(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((began[0], time.perf_counter()))

    gc.callbacks.append(collecting)
    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        stop.set()
        await ticker
        gc.callbacks.remove(collecting)

    def paused(start: float, end: float) -> float:
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in pauses)

    return result, max(end - start - 0.001 - paused(start, end) for start, end in ticks)


def routing_on_the_loop(job: offload._Job) -> None:
    """A stand-in for routing's workers that runs each call at once on the event loop, as the async
    paths did before: the control that shows the stall test can fail."""
    offload._run([job])
    offload._settle_futures([job])


def check_books(router: Router, scope: str, bill: float, *, requests: int, released: int) -> None:
    state = router.budget_state(scope)
    assert state.committed == pytest.approx(bill, abs=EXACT)
    assert state.reserved == 0 and router.store.open_reservations() == 0
    assert state.requests == requests and state.released == released


# ----------------------------------------------------------------- (1) the loop keeps ticking
# Offline candidates that await 50 ms, so that the loop's own work is the adapters' and routing's,
# not an HTTP client's.
CONCURRENT = 16


def lc_fake_router() -> Router:
    return Router([lc_fake("gpt", FakeToolChatModel(model_name=GPT, latency_s=SLOW_S), input_price=0.15,
                           output_price=0.6, quality=0.8),
                   lc_fake("mini", FakeToolChatModel(model_name=MINI, latency_s=SLOW_S), input_price=0.1,
                           output_price=0.4, quality=0.6)],
                  store=SlowStore(), default_budget=Budget(usd=10.0))


def li_fake_router() -> Router:
    return Router([li_fake(EXPENSIVE, UsageLLM(label="expensive", delay_s=SLOW_S)),
                   li_fake(CHEAP, UsageLLM(label="cheap", delay_s=SLOW_S))],
                  store=SlowStore(), default_budget=Budget(usd=10.0))


async def lc_calls() -> tuple[Router, list[dict[str, Any]]]:
    chat = ChatOmniRoute(router=lc_fake_router(), max_tokens=64)

    async def streamed(i: int) -> Any:
        last = None
        async for chunk in chat.astream(f"Question {i}: say something.", session="loop"):
            last = chunk
        return last

    answers = await asyncio.gather(*(chat.ainvoke(f"Question {i}: say something.", session="loop")
                                     for i in range(CONCURRENT // 2)),
                                   *(streamed(i) for i in range(CONCURRENT // 2)))
    return chat.router, [a.response_metadata["omniroute"] for a in answers]


async def li_calls() -> tuple[Router, list[dict[str, Any]]]:
    llm = OmniRouteLLM(router=li_fake_router(), session="loop")

    async def streamed() -> Any:
        return [c async for c in await llm.astream_chat(MESSAGES, max_tokens=64)][-1]

    answers = await asyncio.gather(*(llm.achat(MESSAGES, max_tokens=64) for _ in range(CONCURRENT // 2)),
                                   *(streamed() for _ in range(CONCURRENT // 2)))
    return llm.router, [a.additional_kwargs["omniroute"] for a in answers]


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
async def test_a_slow_decision_and_settlement_do_not_stall_the_event_loop(adapter, monkeypatch):
    run = lc_calls if adapter == "langchain" else li_calls
    await run()  # first calls load tokenizers and lazily imported modules: not what is measured
    (router, records), stall = await worst_stall(run())
    # 16 calls × (50 ms reserving + 50 ms committing) = 1.6 s of ledger time, none of it on the loop.
    assert stall < 0.1, f"the event loop stalled {stall * 1e3:.0f} ms"
    assert len(records) == CONCURRENT
    check_books(router, "loop", sum(r["actual_cost_usd"] for r in records), requests=CONCURRENT, released=0)

    # The control: the same calls with routing run on the loop (as the async paths were) stall it
    # for one 50 ms ledger call after another.
    monkeypatch.setattr(offload, "_dispatch", routing_on_the_loop)
    (router, records), stall_on_loop = await worst_stall(run())
    assert stall_on_loop > 0.5, f"the control stalled only {stall_on_loop * 1e3:.0f} ms"
    check_books(router, "loop", sum(r["actual_cost_usd"] for r in records), requests=CONCURRENT, released=0)


# ----------------------------------------------------------------- (2) the same books on every ledger
CALLS, FAILING = 24, 4


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
async def test_concurrent_calls_with_fallbacks_and_streams_commit_exactly_the_bill(billing, kind, adapter, tmp_path):
    # The first FAILING requests to gpt fail with a 503 and fall back to mini: their reservations
    # are released, the fallback's committed, by the worker threads, concurrently, on each ledger.
    billing.configure(GPT, **PRICES[GPT], fail_status=503, fail_times=FAILING)
    with ledger(kind, tmp_path) as store:
        if adapter == "langchain":
            chat = ChatOmniRoute(router=Router(lc_candidates(billing), store=store), max_tokens=64)
            router = chat.router

            async def call(i: int) -> dict[str, Any]:
                if i % 2:
                    return (await chat.ainvoke(f"Question {i}.", session="books")).response_metadata["omniroute"]
                last = None
                async for chunk in chat.astream(f"Question {i}.", session="books"):
                    last = chunk
                return last.response_metadata["omniroute"]
        else:
            llm = OmniRouteLLM(router=Router(li_candidates(billing), store=store), session="books")
            router = llm.router

            async def call(i: int) -> dict[str, Any]:
                if i % 2:
                    return (await llm.achat(MESSAGES, max_tokens=64)).additional_kwargs["omniroute"]
                chunks = [c async for c in await llm.astream_chat(MESSAGES, max_tokens=64)]
                return chunks[-1].additional_kwargs["omniroute"]

        router.set_budget("books", Budget(usd=5.0))
        records = await asyncio.gather(*(call(i) for i in range(CALLS)))

        # (A burst of connections can also overflow the test server's backlog: another failed attempt.)
        failed = sum(len(r["failures"]) for r in records)
        assert failed >= FAILING
        assert sum(1 for q in billing.requests if q.status == 200) == CALLS
        assert all(r["usage_source"] == "provider" for r in records)
        assert sum(r["actual_cost_usd"] for r in records) == pytest.approx(billing.bill_usd, abs=EXACT)
        check_books(router, "books", billing.bill_usd, requests=CALLS, released=failed)


# ----------------------------------------------------------------- (3) cancellation
def lc_call(billing, store: MemoryStore) -> tuple[Router, Callable[[], Awaitable[Any]]]:
    chat = ChatOmniRoute(router=Router(lc_candidates(billing), store=store, default_budget=Budget(usd=1.0)))
    return chat.router, lambda: chat.ainvoke("Hello.", session="cancel")


def lc_stream(billing, store: MemoryStore) -> tuple[Router, Callable[[], Awaitable[Any]]]:
    chat = ChatOmniRoute(router=Router(lc_candidates(billing), store=store, default_budget=Budget(usd=1.0)))

    async def read() -> list[Any]:
        return [c async for c in chat.astream("Hello.", session="cancel")]
    return chat.router, read


def li_call(billing, store: MemoryStore) -> tuple[Router, Callable[[], Awaitable[Any]]]:
    llm = OmniRouteLLM(router=Router(li_candidates(billing), store=store, default_budget=Budget(usd=1.0)))
    return llm.router, lambda: llm.achat(MESSAGES, session="cancel")


def li_stream(billing, store: MemoryStore) -> tuple[Router, Callable[[], Awaitable[Any]]]:
    llm = OmniRouteLLM(router=Router(li_candidates(billing), store=store, default_budget=Budget(usd=1.0)))

    async def read() -> list[Any]:
        return [c async for c in await llm.astream_chat(MESSAGES, session="cancel")]
    return llm.router, read


FORMS = {"ainvoke": lc_call, "astream": lc_stream, "achat": li_call, "astream_chat": li_stream}


@pytest.mark.parametrize("form", FORMS)
async def test_a_task_cancelled_while_it_decides_leaves_nothing_reserved(billing, form):
    store = GatedStore("reserve")
    router, call = FORMS[form](billing, store)
    task = asyncio.create_task(call())
    assert await asyncio.to_thread(store.entered.wait, 10)  # the worker is making the reservation
    task.cancel()
    # Delivered at once, while the worker is still inside the ledger's reserve.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert not store.proceed.is_set()
    store.proceed.set()
    # The reservation the worker then makes, for nobody, is released as soon as it is made.
    assert await asyncio.to_thread(store.released.wait, 10)
    check_books(router, "cancel", 0.0, requests=0, released=1)
    assert billing.requests == []


@pytest.mark.parametrize("form", FORMS)
async def test_a_task_cancelled_while_it_settles_is_charged_its_bill_before_the_cancellation(billing, form):
    store = GatedStore("commit")
    router, call = FORMS[form](billing, store)
    task = asyncio.create_task(call())
    assert await asyncio.to_thread(store.entered.wait, 10)  # the answer is in; the worker is committing it
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the commit begun is finished first, as a synchronous commit would be
    store.proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    # Settled exactly once, by the provider's own usage, and the cancellation came after it.
    assert len(billing.requests) == 1
    check_books(router, "cancel", billing.bill_usd, requests=1, released=0)


# ----------------------------------------------------------------- context and errors
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="unset")


class RecordingStore(MemoryStore):
    """A memory ledger noting, per operation, the thread it ran on and the caller's context variable there."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str]] = []

    def _note(self, operation: str) -> None:
        self.seen.append((operation, threading.current_thread().name, CALLER.get()))

    def _reserve(self, *args: Any) -> None:
        self._note("reserve")
        super()._reserve(*args)

    def _commit_books(self, *args: Any) -> Any:
        self._note("commit")
        return super()._commit_books(*args)


@pytest.mark.parametrize("form", FORMS)
async def test_the_ledger_runs_off_the_loop_thread_in_the_callers_context(billing, form):
    store = RecordingStore()
    router, call = FORMS[form](billing, store)
    CALLER.set(f"request-{form}")
    await call()
    loop_thread = threading.current_thread().name
    assert [op for op, _, _ in store.seen] == ["reserve", "commit"]
    assert all(thread != loop_thread and thread.startswith("omniroute-routing") for _, thread, _ in store.seen)
    assert {value for _, _, value in store.seen} == {f"request-{form}"}
    check_books(router, "cancel", billing.bill_usd, requests=1, released=0)


class BrokenStore(MemoryStore):
    """A memory ledger that cannot be reached when reserving."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def _reserve(self, *args: Any) -> None:
        raise self.error


@pytest.mark.parametrize("form", FORMS)
async def test_an_error_raised_in_a_worker_thread_surfaces_unchanged(billing, form):
    error = LedgerUnavailable("redis: connection refused")
    router, call = FORMS[form](billing, BrokenStore(error))
    with pytest.raises(LedgerUnavailable) as raised:
        await call()
    assert raised.value is error
    assert billing.requests == []
