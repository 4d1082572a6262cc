"""Issue 13: money for removed candidates, a ledger that blinks at settle time, tenant-bound routers,
validated router settings."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from ledger_support import Blinking

from shared_core import Budget, Candidate, Router
from shared_core.budget import BudgetExceeded, LedgerUnavailable, MemoryStore
from shared_core.calls import settle_usage
from shared_core.pricing import Usage


def _cands() -> list[Candidate]:
    return [Candidate(name="big", input_price=10.0, output_price=30.0, prior_quality=0.9),
            Candidate(name="small", input_price=0.5, output_price=1.5, prior_quality=0.6)]


def test_a_call_in_flight_when_its_model_is_removed_is_still_charged():
    router = Router(_cands())
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello.", "s", model="big", max_tokens=10)
    router.remove_candidate("big")
    settlement = settle_usage(router, decision, Usage(input_tokens=12, output_tokens=10))
    assert settlement.cost_usd == pytest.approx((12 * 10.0 + 10 * 30.0) / 1e6)
    assert router.budget_state("s").by_model == {"big": pytest.approx(settlement.cost_usd)}


class BlinkingStore(Blinking, MemoryStore):
    """A memory ledger whose commits and releases fail while `down` is set."""


def test_a_settle_the_ledger_cannot_take_is_kept_and_recorded_later(caplog):
    store = BlinkingStore()
    router = Router(_cands(), store=store)
    router.set_budget("s", Budget(usd=1.0))
    decision = router.decide("Hello.", "s", model="small", max_tokens=10)
    store.down = True
    with caplog.at_level(logging.ERROR, logger="omniroute"):
        settlement = settle_usage(router, decision, Usage(input_tokens=12, output_tokens=10))
    assert settlement.cost_usd > 0 and settlement.remaining_usd is not None  # the caller keeps the answer
    assert "kept in memory to retry" in caplog.text and router.retry_pending() == 1
    store.down = False
    assert router.retry_pending() == 0
    assert router.budget_state("s").committed == pytest.approx(settlement.cost_usd)
    assert router.budget_state("s").reserved == 0


def test_a_chat_model_answers_through_a_ledger_blip():
    from omniroute_lc import ChatOmniRoute
    from omniroute_lc.fakes import FakeToolChatModel

    store = BlinkingStore()
    candidates = [c.model_copy(update={"model": FakeToolChatModel(model_name=c.name)}) for c in _cands()]
    router = Router(candidates, store=store, default_budget=Budget(usd=1.0))
    chat = ChatOmniRoute(router=router, candidates=candidates)
    store.down = True  # commits and releases fail: the caller still gets every answer it paid for
    reply = chat.invoke("Hello.", session="s")
    assert reply.content and reply.response_metadata["omniroute"]["actual_cost_usd"] > 0
    assert "".join(str(chunk.content) for chunk in chat.stream("Hello, streaming.", session="s"))
    assert asyncio.run(chat.ainvoke("Hello, async.", session="s")).content
    store.down = False
    chat.invoke("Hello again.", session="s")  # the next commit records the kept ones first
    assert router.budget_state("s").requests == 4 and router.budget_state("s").reserved == 0


def test_a_tenant_router_keeps_every_session_inside_its_prefix():
    router = Router(_cands(), scope_prefix="acme", default_budget=Budget(usd=1.0))
    router.set_budget("victim", Budget(usd=1.0))
    decision = router.decide("Hello.", "victim/x", max_tokens=10)
    assert decision.scope == "acme/victim/x"
    assert router.budget_state("victim").reserved == 0  # the other tenant's money is untouched
    assert router.scope_of(None) == "acme/default"


@pytest.mark.parametrize(("name", "value"), [
    ("reservation_ttl_s", 1e-9), ("reservation_ttl_s", 0), ("reservation_ttl_s", float("nan")),
    ("reservation_ttl_s", "600"), ("cost_weight", float("nan")), ("cost_weight", -1.0), ("cost_weight", True),
])
def test_router_settings_are_validated_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        Router(_cands(), **{name: value})


def test_both_adapters_bind_callers_to_a_tenant():
    from llama_index.core.llms import MockLLM

    from omniroute_lc import ChatOmniRoute
    from omniroute_lc.fakes import FakeToolChatModel
    from omniroute_li import OmniRouteLLM

    candidates = [c.model_copy(update={"model": FakeToolChatModel(model_name=c.name)}) for c in _cands()]
    chat = ChatOmniRoute(candidates=candidates, budget=Budget(usd=1.0), scope_prefix="acme")
    # A client-supplied LangGraph thread id naming another tenant stays inside this one.
    reply = chat.invoke("Hello.", config={"configurable": {"thread_id": "victim-tenant/x"}})
    assert reply.response_metadata["omniroute"]["scope"] == "acme/victim-tenant/x"
    llm = OmniRouteLLM([Candidate(name="m", model=MockLLM(), input_price=1, output_price=1, prior_quality=0.5,
                                  supports_tools=False)], budget=Budget(usd=1.0), scope_prefix="acme")
    assert llm.complete("Hi", session="victim/x").additional_kwargs["omniroute"]["scope"] == "acme/victim/x"


@pytest.mark.parametrize(("session", "message"), [
    ("a" * 600, "at most 512 characters"),
    ("/".join(["s"] * 16_000), "at most 512 characters"),
    ("/".join(["s"] * 9), "at most 8 levels"),
    ("bad\ud800name", "printable UTF-8"),
    ("tab\there", "printable UTF-8"),
    ("acme//x", "non-empty path"),
    ("acme /x", "whitespace"),
    (" ", "whitespace"),
    ("acme/\u00a0x", "whitespace"),
])
def test_session_ids_are_bounded_and_clean(session, message):
    router = Router(_cands(), default_budget=Budget(usd=1.0))
    router.release(router.decide("Hello.", "good/session"))  # checked names are remembered (cached) ...
    for _ in range(2):  # ... refused ones never are
        with pytest.raises(ValueError, match=message):
            router.decide("Hello.", session)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_budget_the_ledger_lost_is_re_established_not_dropped(kind, tmp_path, caplog):
    from ledger_support import redis_admin, store_url

    from shared_core.stores import open_store

    with store_url(kind, tmp_path) as url:
        router = Router(_cands(), store=url)
        try:
            router.set_budget("acme", Budget(usd=0.001))
            # The ledger loses everything: Redis restarted without persistence, or a wiped file.
            if kind == "redis":
                admin = redis_admin()
                admin.delete(*admin.keys(router.store.prefix + "*"))
            else:
                router.store.close()
                (tmp_path / url.split("/")[-1]).unlink()
                router.store = open_store(url)
            with caplog.at_level(logging.ERROR, logger="omniroute"):
                decision = router.decide("Hello.", "acme", max_tokens=10, model="small")
            assert decision.scopes == ("acme",)  # still budgeted, not silently unbudgeted
            assert "lost the budget of scope 'acme'" in caplog.text
            assert router.budget_state("acme").budget.usd == 0.001
        finally:
            router.store.close()


def test_feedback_memory_is_bounded_and_forgets_the_oldest_first(train_sample, test_split, tmp_path):
    from shared_core.fitting import fit_router

    router = fit_router(train_sample(300, 0), "knn", warm_start=False)
    knn = router.quality
    knn.max_feedback = 100
    trained = len(knn.memory_.X)
    prompts = list(dict.fromkeys(test_split.prompts))[:250]  # real prompts: distinct embeddings
    decisions = [router.decide(p) for p in prompts]
    for d in decisions:
        router.feedback(d, 1.0)
    assert trained + 90 <= len(knn.memory_.X) <= trained + 100
    assert len(knn.feedback_rows_) == len(knn.memory_.X) - trained
    # The newest feedback is remembered, the oldest forgotten.
    def remembered(text: str) -> bool:
        x = router.pool.features([text])[0]
        x = x / np.linalg.norm(x)
        return bool(np.isclose(knn.memory_.X[knn.feedback_rows_] @ x, 1.0, atol=1e-9).any())

    assert remembered(decisions[-1].text) and not remembered(decisions[0].text)
    # Saved and loaded, the bound and the order survive; removing a model renumbers them.
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    assert loaded.quality.max_feedback == 100
    assert np.array_equal(loaded.quality.feedback_rows_, knn.feedback_rows_)
    loaded.remove_candidate(loaded.candidates[0].name)
    assert loaded.quality.feedback_rows_.max() < len(loaded.quality.memory_.X)


def test_redis_expires_a_backlog_of_holds_in_bounded_batches():
    from ledger_support import FakeClock, redis_admin, require_redis

    from shared_core.stores import open_store

    require_redis()
    import uuid

    prefix, clock = f"omniroute-test:{uuid.uuid4().hex}:", FakeClock()
    store = open_store(f"redis://127.0.0.1:6379/0?prefix={prefix}", clock=clock)
    try:
        store.set_budget("s", Budget(usd=100.0))
        for i in range(2_500):
            store.reserve(f"r{i}", ["s"], 0.001, ttl_s=1)
        clock.advance(2)
        # Each operation lapses at most 1,000 holds; the rest stay counted as held meanwhile.
        assert store.state("s").expired == 1_000
        assert store.state("s").expired == 2_000
        assert store.state("s").expired == 2_500 and store.state("s").reserved == 0
    finally:
        store.close()
        admin = redis_admin()
        keys = list(admin.scan_iter(match=prefix + "*"))
        if keys:
            admin.delete(*keys)


def test_a_busy_redis_is_a_ledger_that_is_unavailable():
    import redis
    from ledger_support import require_redis

    from shared_core.stores import open_store

    require_redis()
    store = open_store("redis://127.0.0.1:6379/0?prefix=omniroute-test-busy:")
    try:
        def busy(*args, **kwargs):
            raise redis.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL")

        store.client.evalsha = busy
        store.client.eval = busy
        with pytest.raises(LedgerUnavailable, match="busy"):
            store.state("s")
    finally:
        store.close()


def test_a_kept_settle_the_ledger_forgot_is_recorded_anew_and_never_blocks_others():
    from ledger_support import FakeClock

    clock = FakeClock()
    store = BlinkingStore(clock=clock, retention_s=60)
    router = Router(_cands(), store=store)
    router.set_budget("s", Budget(usd=1.0))
    first, second = (router.decide("Hello.", "s", model="small", max_tokens=10) for _ in range(2))
    store.down = True
    router.settle(first, output_tokens=10)
    router.settle(second, output_tokens=10)
    assert router.retry_pending() == 2
    store.down = False
    clock.advance(3_600)  # the outage outlasted the reservations' lapse and their retention
    router.budget_state("s")
    clock.advance(120)
    third = router.decide("Hello.", "s", model="small", max_tokens=10)
    router.settle(third, output_tokens=10)  # also records the two kept settles
    state = router.budget_state("s")
    assert state.requests == 3 and router.retry_pending() == 0
    assert state.committed == pytest.approx(3 * router.candidate("small").cost(third.input_tokens["small"], 10))


def test_a_scope_an_eviction_left_partial_is_rebuilt_by_its_budget():
    import uuid

    from ledger_support import redis_admin, require_redis

    from shared_core.stores import open_store

    require_redis()
    prefix = f"omniroute-test:{uuid.uuid4().hex}:"
    store = open_store(f"redis://127.0.0.1:6379/0?prefix={prefix}")
    admin = redis_admin()
    try:
        router = Router(_cands(), store=store)
        router.set_budget("b", Budget(usd=10.0))
        decision = router.decide("Hello.", "b", model="small", max_tokens=10)
        admin.delete(prefix + "scope:b")  # evicted under maxmemory while the call ran
        router.settle(decision, output_tokens=10)  # a late commit must not leave a partial scope
        assert router.budget_state("b") is None  # no half-scope: the ledger simply lacks it
        # The next request re-establishes it from the budget set in code, whole.
        assert router.decide("Hello.", "b", model="small", max_tokens=10).scopes == ("b",)
        assert router.budget_state("b").budget.usd == 10.0
    finally:
        store.close()
        keys = list(admin.scan_iter(match=prefix + "*"))
        if keys:
            admin.delete(*keys)


@pytest.mark.parametrize("fields", [{"usd": True}, {"usd": 1.0, "horizon": True}, {"usd": 1.0, "period_s": True}])
def test_a_budget_is_not_a_bool(fields):
    with pytest.raises(ValueError, match="must be a number"):
        Budget(**fields)


def _spend_until_refused(router: Router, session: str, tries: int) -> tuple[int, float]:
    """Calls made and USD charged before the budget refuses (every call costs its full cap)."""
    made, spent = 0, 0.0
    for _ in range(tries):
        try:
            decision = router.decide("Hello.", session, max_tokens=10, model="small")
        except BudgetExceeded:
            continue
        assert decision.scopes, "a request ran without a budget"
        spent += router.settle(decision, output_tokens=10)
        made += 1
    return made, spent


def test_a_redis_restarted_without_persistence_keeps_budgets_set_in_code(private_redis, caplog):
    server = private_redis()
    router = Router(_cands(), store=server.url)
    try:
        router.set_budget("acme", Budget(usd=0.001))
        made, spent = _spend_until_refused(router, "acme", 200)
        assert 0 < made < 200 and spent <= 0.001
        server.kill()
        server.start()  # empty: it kept nothing
        with caplog.at_level(logging.ERROR, logger="omniroute"):
            made_after, spent_after = _spend_until_refused(router, "acme", 200)
        # The budget is back, without the spend the server forgot: at most one more budget's worth.
        assert made_after == made and spent_after <= 0.001
        assert caplog.text.count("lost the budget of scope 'acme'") == 1
    finally:
        router.store.close()


def test_a_redis_evicting_under_maxmemory_keeps_budgets_set_in_code(private_redis, caplog):
    server = private_redis("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru")
    router = Router(_cands(), store=server.url)
    admin = server.client()
    try:
        router.set_budget("acme", Budget(usd=0.001))
        made, _ = _spend_until_refused(router, "acme", 200)
        scope_key = router.store.prefix + "scope:acme"
        filler = "x" * 10_000
        for i in range(5_000):  # other data fills the server until it evicts the ledger's keys
            admin.set(f"filler:{i}", filler)
            if not admin.exists(scope_key):
                break
        assert not admin.exists(scope_key), "maxmemory never evicted the scope"
        admin.delete(*admin.keys("filler:*"))  # room for the ledger again
        with caplog.at_level(logging.ERROR, logger="omniroute"):
            made_after, spent_after = _spend_until_refused(router, "acme", 200)
        assert made_after == made and spent_after <= 0.001
        assert "lost the budget of scope 'acme'" in caplog.text
    finally:
        admin.close()
        router.store.close()
