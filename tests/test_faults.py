"""Providers that fail, hang or report no usage, and a Redis that goes away: the books stay right."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ledger_support import REDIS_HOST, REDIS_PORT, STORES, FakeClock, ledger, redis_admin, require_redis, store_url

from shared_core import offload
from shared_core.budget import Budget, LedgerUnavailable, to_nanos
from shared_core.calls import acall_with_fallbacks, call_with_fallbacks, settle_usage
from shared_core.candidates import Candidate
from shared_core.router import Decision, Router
from shared_core.stores import open_store
from shared_core.stores.base import FailingFast, Outage
from shared_core.tokens import count_tokens

PROMPT = "What is the capital of France? Answer in one sentence."
ANSWER = "Paris is the capital of France."
TIMEOUT_S = 0.05
# Ranked by prior quality: the best candidate raises, the next never answers, the last replies
# with text but no usage, as a bare completion endpoint does.
CANDIDATES = [
    Candidate(name="flaky", input_price=5.0, output_price=15.0, max_output_tokens=256, prior_quality=0.9),
    Candidate(name="silent", input_price=1.0, output_price=4.0, max_output_tokens=256, prior_quality=0.8),
    Candidate(name="terse", input_price=0.5, output_price=1.5, max_output_tokens=256, prior_quality=0.7),
]


@pytest.fixture
def silent_server():
    """An address that accepts connections and never answers (a provider stuck mid-request)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield server.getsockname()
    server.close()


def _call(address, *, terse_fails: bool = False):
    def call(candidate: Candidate, decision: Decision) -> str:
        if candidate.name == "flaky":
            raise ConnectionRefusedError("provider refused the connection")
        if candidate.name == "silent":
            with socket.create_connection(address, timeout=TIMEOUT_S) as conn:
                conn.sendall(b"POST /v1/chat/completions\r\n\r\n")
                conn.recv(1)  # raises TimeoutError: no answer comes
        if terse_fails:
            raise RuntimeError("terse is down too")
        return ANSWER
    return call


def _acall(address):
    async def call(candidate: Candidate, decision: Decision) -> str:
        if candidate.name == "flaky":
            raise ConnectionRefusedError("provider refused the connection")
        if candidate.name == "silent":
            reader, writer = await asyncio.open_connection(*address)
            try:
                await asyncio.wait_for(reader.read(1), TIMEOUT_S)
            finally:
                writer.close()
        return ANSWER
    return call


@pytest.fixture(params=STORES)
def router(request, tmp_path):
    with ledger(request.param, tmp_path) as store:
        r = Router(CANDIDATES, store=store)
        r.set_budget("acme", Budget(usd=1.0))
        r.set_budget("acme/bot", Budget(usd=0.5))
        yield r


def _stuck_worst_case(router: Router, decision: Decision) -> float:
    """What the call stuck waiting for its answer held, and is charged: the provider may still bill it."""
    return router.candidate("silent").worst_case_cost(decision.input_tokens["silent"], decision.output_caps["silent"])


def _assert_terse_answered_and_the_stuck_call_was_charged(router: Router, decision: Decision, cost: float) -> None:
    terse = router.candidate("terse")
    expected = terse.cost(decision.input_tokens["terse"], count_tokens(ANSWER, terse.encoding))
    stuck = _stuck_worst_case(router, decision)
    assert (decision.chosen, decision.failed, decision.attempt) == ("terse", ("flaky", "silent"), 2)
    assert cost == expected
    for scope in ("acme", "acme/bot"):
        st = router.budget_state(scope)
        # The reset connection is released; the call that timed out waiting is charged its worst case.
        assert to_nanos(st.committed) == to_nanos(expected) + to_nanos(stuck) and st.reserved == 0.0
        assert (st.requests, st.released) == (2, 1)
        assert st.by_model == {"silent": pytest.approx(stuck), "terse": pytest.approx(expected)}
    assert router.store.open_reservations() == 0


def test_a_raise_and_a_timeout_fall_back_to_a_reply_without_usage(router, silent_server):
    reply, decision = call_with_fallbacks(router, router.decide(PROMPT, "acme/bot"), _call(silent_server))
    cost = settle_usage(router, decision, output_text=reply).cost_usd
    _assert_terse_answered_and_the_stuck_call_was_charged(router, decision, cost)


async def test_the_async_loop_falls_back_the_same_way(router, silent_server):
    reply, decision = await acall_with_fallbacks(router, router.decide(PROMPT, "acme/bot"), _acall(silent_server))
    cost = settle_usage(router, decision, output_text=reply).cost_usd
    _assert_terse_answered_and_the_stuck_call_was_charged(router, decision, cost)


def test_when_every_candidate_fails_the_last_error_surfaces_and_only_the_stuck_call_is_charged(router, silent_server):
    decision = router.decide(PROMPT, "acme/bot")
    with pytest.raises(RuntimeError, match="terse is down too"):
        call_with_fallbacks(router, decision, _call(silent_server, terse_fails=True))
    st = router.budget_state("acme/bot")
    assert (to_nanos(st.committed), st.reserved, st.requests, st.released) == (
        to_nanos(_stuck_worst_case(router, decision)), 0.0, 1, 2)
    assert router.store.open_reservations() == 0


def test_an_empty_reply_without_usage_costs_its_input(router):
    decision = router.decide(PROMPT, "acme/bot")
    cost = settle_usage(router, decision, output_text="").cost_usd
    chosen = router.candidate(decision.chosen)
    assert cost == chosen.cost(decision.input_tokens[chosen.name], 0) > 0
    assert router.budget_state("acme/bot").committed == pytest.approx(cost, abs=1e-9)


def test_a_reply_with_neither_usage_nor_text_is_refused_and_keeps_its_hold(router):
    decision = router.decide(PROMPT, "acme/bot")
    with pytest.raises(ValueError, match="needs output_tokens"):
        router.settle(decision)
    st = router.budget_state("acme/bot")
    assert (st.committed, st.reserved) == (0.0, pytest.approx(decision.reserved))
    router.release(decision)
    assert router.store.open_reservations() == 0


# ----------------------------------------------------------------- Redis going away


class FlakyProxy:
    """A TCP proxy to Redis that can drop every connection and refuse new ones until restored."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        self.port = self._server.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._links: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            client.settimeout(None)
            upstream = socket.create_connection((REDIS_HOST, REDIS_PORT))
            with self._lock:
                self._links += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self._up.clear()
        with self._lock:
            for s in self._links:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._links.clear()

    def restore(self) -> None:
        """Serve connections again."""
        self._up.set()

    def close(self) -> None:
        self.cut()
        self._closed = True
        self._thread.join()
        self._server.close()


def wait_until(done: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether `done()` came true within `timeout_s` (asked every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def drop_keys(prefix: str) -> None:
    """Delete the test server's keys under `prefix`."""
    admin = redis_admin()
    keys = list(admin.scan_iter(match=prefix + "*"))
    if keys:
        admin.delete(*keys)
    admin.close()


@pytest.fixture
def proxy():
    require_redis()
    p = FlakyProxy()
    yield p
    p.close()


def test_a_connection_killed_by_the_server_is_reopened_without_losing_a_request(tmp_path):
    with store_url("redis", tmp_path) as url:
        router = Router(CANDIDATES, store=url)
        router.set_budget("acme", Budget(usd=1.0))
        admin = redis_admin()
        costs = []
        for i in range(30):
            decision = router.decide(PROMPT, "acme")
            if i % 5 == 0:  # kill the connection the ledger just used, with the money held
                admin.client_kill_filter(_id=router.store.client.client_id())
            costs.append(router.settle(decision, output_tokens=20))
        st = router.budget_state("acme")
        assert to_nanos(st.committed) == sum(to_nanos(c) for c in costs) and st.requests == 30
        assert st.reserved == 0.0 and router.store.open_reservations() == 0
        admin.close()
        router.store.close()


@pytest.mark.slow
def test_a_redis_outage_fails_clearly_and_the_books_stay_consistent(proxy, silent_server):
    prefix, clock = f"omniroute-test:{uuid.uuid4().hex}:", FakeClock()
    store = open_store(f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}", clock=clock, unreachable_cooldown_s=0.2)
    router = Router(CANDIDATES, store=store, reservation_ttl_s=60)
    try:
        router.set_budget("acme", Budget(usd=1.0))
        costs = [router.settle(router.decide(PROMPT, "acme"), output_tokens=20) for _ in range(5)]
        answered = router.decide(PROMPT, "acme")  # the model answers just as Redis goes away
        stranded = router.decide(PROMPT, "acme")  # this call will fail while Redis is away

        proxy.cut()
        # The answer was paid for: its settle does not fail the call; the money is kept to record.
        kept = router.settle(answered, output_tokens=20)
        assert router.retry_pending() == 1
        with pytest.raises(LedgerUnavailable, match="unreachable"):
            router.decide(PROMPT, "acme")  # no budget check, no call: the request fails at once
        with pytest.raises(LedgerUnavailable):
            call_with_fallbacks(router, stranded, _call(silent_server))  # the release cannot reach Redis

        proxy.restore()
        # Calls fail at once, untried, until the outage's cool-down ends; then the kept settle lands once.
        assert wait_until(lambda: router.retry_pending() == 0)
        costs.append(kept)
        router.settle(answered, output_tokens=20)  # settling again charges nothing more
        assert router.budget_state("acme").reserved == pytest.approx(stranded.reserved)
        clock.advance(60)  # the stranded reservation expires and its money returns
        st = router.budget_state("acme")
        assert to_nanos(st.committed) == sum(to_nanos(c) for c in costs)
        assert (st.requests, st.reserved, st.expired) == (6, 0.0, 1)
        assert router.store.open_reservations() == 0
    finally:
        router.store.close()
        drop_keys(prefix)


def test_a_stream_that_starts_after_its_attempt_was_given_up_on_is_closed_in_its_own_thread():
    # Left to the garbage collector, the late stream would be closed in whatever thread collects
    # it — one that may hold the same HTTP connection pool's lock (a deadlock seen with httpx).
    import gc
    import time

    from shared_core.calls import FallbackStream

    closed_in: list[str] = []

    def chunks(candidate: Candidate, holder: dict) -> Iterator[str]:
        try:
            if candidate.name == "flaky":
                time.sleep(0.3)  # past the attempt timeout: given up on before its first chunk
            yield f"{candidate.name}-first"
            yield f"{candidate.name}-second"
        finally:
            closed_in.append(threading.current_thread().name)
            holder.clear()

    def start(candidate: Candidate, decision: Decision) -> Iterator[str]:
        holder: dict = {}
        holder["self"] = stream = chunks(candidate, holder)  # a cycle: only the cyclic GC would free it
        return stream

    router = Router(CANDIDATES, attempt_timeout_s=0.1)
    router.set_budget("acme", Budget(usd=1.0))
    gc.disable()
    try:
        assert list(FallbackStream(router, router.decide(PROMPT, "acme"), start)) == ["silent-first", "silent-second"]
        deadline = time.monotonic() + 2.0
        while len(closed_in) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        gc.enable()
    assert sorted(closed_in) == ["MainThread", "omniroute-attempt"]
    assert router.budget_state("acme").by_model["flaky"] > 0  # given up on: charged its worst case


def test_a_fallback_reserved_after_the_deadline_is_released_unstarted(router):
    # The reroute's reservation can take the last of the time: an attempt with none left would be
    # cancelled unsent (async) or sent unread (sync), and charged either way.
    import time


    router.deadline_s = 0.5
    called: list[str] = []
    reroute = router.reroute

    def slow_reroute(decision: Decision, error: BaseException | None = None, **kwargs: Any) -> Decision | None:
        time.sleep(0.6)  # past the deadline
        return reroute(decision, error, **kwargs)

    router.reroute = slow_reroute  # type: ignore[method-assign]

    def call(candidate: Candidate, decision: Decision) -> str:
        called.append(candidate.name)
        raise ConnectionRefusedError(f"{candidate.name} refused")

    with pytest.raises(ConnectionRefusedError, match="flaky refused"):
        call_with_fallbacks(router, router.decide(PROMPT, "acme/bot"), call)
    st = router.budget_state("acme/bot")
    assert called == ["flaky"] and (st.committed, st.reserved, st.released) == (0.0, 0.0, 2)
    assert router.store.open_reservations() == 0


def test_a_stream_that_times_out_or_loses_its_connection_between_chunks_is_charged_its_worst_case(router):
    # A read timeout mid-stream is the client giving up, not the provider: it may go on writing.
    from shared_core.calls import settle_interrupted

    decision = router.decide(PROMPT, "acme/bot")
    settled = settle_interrupted(router, decision, TimeoutError("read timed out"), output_text="Par")
    assert settled.usage_source == "reserved" and settled.cost_usd == pytest.approx(decision.reserved)
    # So is a connection lost mid-stream: the provider may have written (and billed) more than arrived.
    decision = router.decide(PROMPT, "acme/bot")
    settled = settle_interrupted(router, decision, ConnectionResetError("reset"), output_text="Par")
    assert settled.usage_source == "reserved" and settled.cost_usd == pytest.approx(decision.reserved)
    # An error the provider sent (it has a status) ended its work: what it produced is charged.
    decision = router.decide(PROMPT, "acme/bot")
    overloaded = RuntimeError("overloaded_error")
    overloaded.status_code = 529  # type: ignore[attr-defined]  # as anthropic's APIStatusError carries it
    settled = settle_interrupted(router, decision, overloaded, output_text="Par")
    assert settled.usage_source != "reserved" and settled.cost_usd < decision.reserved  # what it produced


def test_an_attempt_the_router_gave_up_on_is_committed_once(router):
    commits: list[str] = []
    commit_books = router.store.commit_books

    def counted(reservation_id: str, *args: object, **kwargs: object) -> object:
        commits.append(reservation_id)
        return commit_books(reservation_id, *args, **kwargs)

    router.store.commit_books = counted  # type: ignore[method-assign]
    router.attempt_timeout_s = 0.1
    first = router.decide(PROMPT, "acme/bot")
    hung = threading.Event()

    def call(candidate: Candidate, decision: Decision) -> str:
        if decision.id == first.id:
            hung.wait(2.0)  # given up on at 0.1 s; it goes on in its thread
        return ANSWER

    try:
        reply, decision = call_with_fallbacks(router, first, call)
    finally:
        hung.set()
    assert commits.count(first.id) == 1  # by the abandonment alone, not again by the fallback
    assert router.budget_state("acme/bot").by_model[first.chosen] == pytest.approx(first.reserved)


@pytest.mark.parametrize("error", [ConnectionRefusedError("refused"), TimeoutError("read timed out")],
                         ids=["refused", "timeout"])
async def test_a_task_cancelled_while_its_fallback_waits_for_a_worker_settles_the_failed_attempt(router, error):
    # The reroute waits in routing's queue behind busy workers; a cancelled caller's queued reservation
    # is never made, so the failed attempt must be settled all the same: released, or charged.
    import time

    from shared_core.offload import off_loop

    gate = asyncio.Event()

    async def call(candidate: Candidate, decision: Decision) -> str:
        await gate.wait()
        raise error

    decision = router.decide(PROMPT, "acme/bot")
    task = asyncio.create_task(acall_with_fallbacks(router, decision, call))
    await asyncio.sleep(0.05)
    blockers = [asyncio.create_task(off_loop(lambda: time.sleep(0.3))) for _ in range(4)]  # both workers busy
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.sleep(0.05)  # the failure has reached the fallback, queued behind the blockers
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.gather(*blockers)
    st = router.budget_state("acme/bot")
    assert st.reserved == 0 and router.store.open_reservations() == 0
    assert to_nanos(st.committed) == (to_nanos(decision.reserved) if isinstance(error, TimeoutError) else 0)


async def test_a_redis_outage_fails_later_calls_at_once_and_holds_no_other_router_up(proxy):
    """Found by a new user: with Redis gone, every settle waited out its retries (1–2 s each) in
    routing's two worker threads, so 100 calls took 99 s to come back and another router's ainvoke
    on a memory ledger took 24 s. Once the first call finds the server unreachable, the calls of
    the next second fail at once (the answers' money kept to record, as before); afterwards the
    ledger is tried again and the kept commits land, once."""
    prefix = f"omniroute-test:{uuid.uuid4().hex}:"
    remote = Router(CANDIDATES, store=f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}")
    local = Router(CANDIDATES)
    try:
        remote.set_budget("acme", Budget(usd=5.0))
        local.set_budget("other", Budget(usd=5.0))
        answered = [remote.decide(PROMPT, "acme") for _ in range(40)]
        proxy.cut()
        start = time.perf_counter()
        settles = [asyncio.ensure_future(offload.off_loop(lambda d=d: remote.settle(d, output_tokens=20)))
                   for d in answered]
        await asyncio.sleep(0.01)
        other = time.perf_counter()
        decided = await offload.decide_off_loop(local, lambda: ("tag", {"request": PROMPT, "session": "other"}),
                                                lambda made: local.release(made[1]))
        other = time.perf_counter() - other
        costs = await asyncio.gather(*settles)
        took = time.perf_counter() - start
        # The first settle spends redis-py's retries and the router's (about 1.5 s); the rest fail at once.
        assert took < 4.0, f"40 settles took {took:.1f} s during the outage"
        assert other < 3.0 and decided[1].chosen, f"another router's decision waited {other:.1f} s"
        with pytest.raises(FailingFast, match="unreachable.*fail at once"):
            remote.decide(PROMPT, "acme")
        assert remote.retry_pending() == 40  # no answer's money is lost: every commit is kept

        proxy.restore()
        assert wait_until(lambda: remote.retry_pending() == 0)
        st = remote.budget_state("acme")
        assert to_nanos(st.committed) == sum(to_nanos(c) for c in costs) and st.requests == 40
        assert st.reserved == 0.0
    finally:
        remote.store.close()
        drop_keys(prefix)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_server_ledger_found_unreachable_is_not_tried_again_until_its_cool_down_ends(kind, tmp_path, monkeypatch):
    """Each server store: the first call that finds it unreachable starts the cool-down; calls
    meanwhile raise FailingFast without a round trip; the first after it tries, and one that
    reaches the server ends the outage."""
    import redis

    with store_url(kind, tmp_path) as url:
        store = open_store(url, unreachable_cooldown_s=0.3)
        store.set_budget("acme", Budget(usd=1.0))
        attempts: list[int] = []
        down = True

        def failing(call: Any, error: type[Exception]) -> Any:
            def attempt(*args: Any, **kwargs: Any) -> Any:
                attempts.append(1)
                if down:  # what the client raises once its own retries are spent
                    raise error("connection refused")
                return call(*args, **kwargs)
            return attempt

        if kind == "redis":  # the scripts, below the store's own handling of their failures
            scripts = {name: failing(script, redis.ConnectionError) for name, script in store._scripts.items()}
            monkeypatch.setattr(store, "_scripts", scripts)
        else:
            monkeypatch.setattr(store, "_run_pooled", failing(store._run_pooled, LedgerUnavailable))
        with pytest.raises(LedgerUnavailable, match="connection refused") as first:
            store.state("acme")
        assert not isinstance(first.value, FailingFast) and len(attempts) == 1
        with pytest.raises(FailingFast, match="connection refused.*fail at once"):
            store.reserve("r", ["acme"], 0.1, 60)
        assert len(attempts) == 1  # not tried
        down = False
        time.sleep(0.35)
        assert store.state("acme").budget.usd == 1.0 and len(attempts) == 2
        store.reserve("r", ["acme"], 0.1, 60)  # the outage is over: no cool-down left behind
        assert len(attempts) == 3
        store.close()


@pytest.mark.parametrize("cooldown", [-1, math.inf, math.nan, "1", True])
def test_a_malformed_cool_down_is_refused(cooldown):
    with pytest.raises(ValueError, match="unreachable_cooldown_s must be a number of seconds >= 0"):
        Outage("redis://127.0.0.1:6379/0", cooldown)


class Ticking:
    """time.monotonic for Outage, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def outage_with_clock(monkeypatch: Any, cooldown_s: float = 1.0) -> tuple[Outage, Ticking]:
    from shared_core.stores import base

    clock = Ticking()
    monkeypatch.setattr(base.time, "monotonic", clock)
    return Outage("redis://test", cooldown_s), clock


def fail(outage: Outage, clock: Ticking, takes_s: float = 0.0) -> None:
    """One attempt that finds the server unreachable after `takes_s` seconds."""
    with pytest.raises(LedgerUnavailable), outage.attempt():
        clock.now += takes_s
        raise LedgerUnavailable("Redis ledger at redis://test is unreachable: connection refused")


def test_an_outages_cool_down_grows_with_slow_and_repeated_failures(monkeypatch):
    """Found by review: a hung server costs each attempt its timeouts (20 s on Redis), so a fixed
    1 s cool-down left the workers trying it most of the time. The cool-down is at least as long
    as the attempt took, doubles at each failure in a row (at most 30 s), and ends with a success."""
    outage, clock = outage_with_clock(monkeypatch)
    fail(outage, clock, takes_s=0.01)
    for waited, expected in ((1.0, 2.0), (2.0, 4.0), (4.0, 8.0)):
        clock.now += waited - 0.001
        with pytest.raises(FailingFast, match=r"found [\d.]+ s ago; not tried again for 0\.0 s"):
            with outage.attempt():
                pass
        clock.now += 0.001
        fail(outage, clock)  # the one try after the cool-down fails: the next cool-down doubles
        with pytest.raises(FailingFast):
            with outage.attempt():
                pass
        clock.now += expected - 0.001
        with pytest.raises(FailingFast):
            with outage.attempt():
                pass
        clock.now -= expected - 0.001
    clock.now += 8.0
    fail(outage, clock, takes_s=20.0)  # a hung server: 20 s an attempt, cooled at 30 s at most
    clock.now += 29.9
    with pytest.raises(FailingFast):
        with outage.attempt():
            pass
    clock.now += 0.1
    with outage.attempt():  # the server answers: the outage is over, and the next failure starts afresh
        pass
    fail(outage, clock)
    clock.now += 1.0
    with outage.attempt():
        pass


def test_after_an_outages_cool_down_one_call_tries_the_server_while_the_others_fail_fast(monkeypatch):
    """Found by review: every caller tried a hung server at once when the cool-down ended."""
    outage, clock = outage_with_clock(monkeypatch)
    fail(outage, clock)
    clock.now += 1.0
    trying = outage.attempt()
    trying.__enter__()
    with pytest.raises(FailingFast, match="another call is trying it now"):
        with outage.attempt():
            pass
    trying.__exit__(None, None, None)  # it got through
    with outage.attempt():
        pass
    # A try interrupted (a cancellation) tells nothing: the next call may try, and no outage ends.
    fail(outage, clock)
    clock.now += 1.0
    with pytest.raises(asyncio.CancelledError), outage.attempt():
        raise asyncio.CancelledError
    with outage.attempt():
        pass


def test_news_older_than_the_latest_is_ignored(monkeypatch):
    """Found by review: a call begun while the server was down that failed after a newer call had
    reached it started a new outage (and a slow success from before could end a newer one)."""
    outage, clock = outage_with_clock(monkeypatch)
    old = outage.attempt()
    old.__enter__()  # begun while the server was down
    clock.now += 0.5
    with outage.attempt():  # a newer call reaches it
        pass
    clock.now += 0.5
    refused = LedgerUnavailable("connection refused")
    assert old.__exit__(LedgerUnavailable, refused, None) is False  # raised on, as in a with block
    with outage.attempt():  # no outage was started by the stale failure
        pass
    slow = outage.attempt()
    slow.__enter__()
    clock.now += 0.1
    fail(outage, clock)
    slow.__exit__(None, None, None)  # a success begun before the failure does not end it
    with pytest.raises(FailingFast):
        with outage.attempt():
            pass


def test_a_postgres_pool_with_every_connection_busy_is_contention_not_an_outage(tmp_path):
    """Found by review: reserves queued behind a locked row timed out waiting for a pooled
    connection, and that started an outage for every scope."""
    from psycopg_pool import PoolTimeout

    with ledger("postgres", tmp_path) as store:
        store.set_budget("acme", Budget(usd=1.0))

        def timed_out(cause: BaseException) -> LedgerUnavailable:
            error = LedgerUnavailable("PostgreSQL ledger is unavailable")
            error.__cause__ = cause
            return error

        assert store._contention(timed_out(PoolTimeout("couldn't get a connection after 5.00 sec")))
        assert not store._contention(timed_out(OSError("connection refused")))


def test_a_redis_turned_read_only_keeps_the_answers_money_to_record(private_redis):
    """Found by review: after a failover left the server a read-only replica, a settle raised
    redis' ReadOnlyError and the money was not kept; it is LedgerUnavailable now, as for
    PostgreSQL's read-only server."""
    server = private_redis()
    router = Router(CANDIDATES, store=server.url + "?prefix=ro:&unreachable_cooldown_s=0")
    router.set_budget("acme", Budget(usd=5.0))
    decision = router.decide(PROMPT, "acme")
    server.client().execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nothing: read-only
    cost = router.settle(decision, output_tokens=20)  # the answer was paid for: no error
    assert router.retry_pending() == 1
    with pytest.raises(LedgerUnavailable, match="READONLY|read only"):
        router.decide(PROMPT, "acme")
    server.client().execute_command("REPLICAOF", "NO", "ONE")
    assert router.retry_pending() == 0
    assert router.budget_state("acme").committed == pytest.approx(cost)


def test_the_cool_down_can_be_set_in_a_store_url(tmp_path):
    with store_url("redis", tmp_path) as url:
        assert open_store(url + "&unreachable_cooldown_s=2.5")._outage.cooldown_s == 2.5
        with pytest.raises(ValueError, match="unreachable_cooldown_s must be a number of seconds, got 'soon'"):
            open_store(url + "&unreachable_cooldown_s=soon")


@pytest.mark.slow
def test_a_hung_redis_costs_a_call_one_timeout_then_calls_fail_fast(private_redis):
    """Found by review: a server that takes connections but never answers (stopped, or a path that
    swallows packets) cost each call four 5 s read timeouts, redis-py retrying each, and held both
    routing workers 20 s. A timed-out reply is not retried; the outage then fails calls at once."""
    import os
    import signal

    server = private_redis()
    router = Router(CANDIDATES, store=server.url + "?prefix=hung:")
    router.set_budget("acme", Budget(usd=5.0))
    decision = router.decide(PROMPT, "acme")
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        cost = router.settle(decision, output_tokens=20)  # kept to record: the answer was paid for
        took = time.monotonic() - started
        assert 4.5 < took < 8.0, f"the settle took {took:.1f} s against a hung server"
        started = time.monotonic()
        with pytest.raises(FailingFast):
            router.decide(PROMPT, "acme")
        assert time.monotonic() - started < 0.1
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert wait_until(lambda: router.retry_pending() == 0, timeout_s=20)
    assert router.budget_state("acme").committed == pytest.approx(cost)
