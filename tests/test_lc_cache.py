"""LangChain's LLM cache: a repeat is answered before routing, free, and never across sessions."""

from __future__ import annotations

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from lc_fakes import two_candidates

from omniroute_lc import ChatOmniRoute, SpendTracker
from shared_core import Budget

PROMPT = "Which gas do plants absorb for photosynthesis?"


@pytest.fixture
def global_cache():
    cache = InMemoryCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(None)


def test_a_cache_hit_is_not_routed_and_costs_nothing(global_cache):
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    tracker = SpendTracker()
    first = chat.invoke(PROMPT, session="s", config={"callbacks": [tracker]})
    spent = chat.router.budget_state("s")
    again = chat.invoke(PROMPT, session="s", config={"callbacks": [tracker]})

    assert again.text == first.text
    hit = again.response_metadata["omniroute"]
    assert (hit["cached"], hit["actual_cost_usd"], hit["remaining_usd"]) == (True, 0.0, None)
    assert hit["decision_id"] == first.response_metadata["omniroute"]["decision_id"]
    assert first.response_metadata["omniroute"]["cached"] is False
    after = chat.router.budget_state("s")
    assert after.requests == spent.requests == 1
    assert after.committed == spent.committed
    assert tracker.total_usd == pytest.approx(spent.committed)


def test_the_cache_is_kept_per_session(global_cache):
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    chat.invoke(PROMPT, session="tenant-a")
    other = chat.invoke(PROMPT, session="tenant-b")
    assert other.response_metadata["omniroute"]["cached"] is False
    assert chat.router.budget_state("tenant-b").requests == 1


def test_streaming_is_always_routed(global_cache):
    chat = ChatOmniRoute(candidates=two_candidates(), budget=Budget(usd=1.0))
    chat.invoke(PROMPT, session="s")
    chunks = list(chat.stream(PROMPT, session="s"))
    assert [c.response_metadata["omniroute"]["cached"] for c in chunks if "omniroute" in c.response_metadata] == [False]
    assert chat.router.budget_state("s").requests == 2


def test_a_per_model_cache_and_cache_false():
    cached = ChatOmniRoute(candidates=two_candidates(), cache=InMemoryCache())
    uncached = ChatOmniRoute(candidates=two_candidates(), cache=False)
    for chat in (cached, uncached):
        chat.invoke(PROMPT)
    assert cached.invoke(PROMPT).response_metadata["omniroute"]["cached"] is True
    assert uncached.invoke(PROMPT).response_metadata["omniroute"]["cached"] is False
