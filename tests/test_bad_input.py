"""Bad input: each is refused with an error that names the problem, and nothing changes."""

from __future__ import annotations

import math

import pytest
from ledger_support import STORES, ledger
from pydantic import ValidationError

from shared_core.budget import MAX_USD, Budget, UnknownScope
from shared_core.candidates import Candidate
from shared_core.router import NoFeasibleCandidate, Router, RoutingError
from shared_core.stores import open_store

PROMPT = "Explain what a budget is in one sentence."
CANDIDATES = [
    Candidate(name="small", input_price=0.15, output_price=0.6, context_window=50, prior_quality=0.6),
    Candidate(name="large", input_price=2.5, output_price=10.0, context_window=80, prior_quality=0.9),
]


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    with ledger(request.param, tmp_path) as s:
        s.set_budget("acme", Budget(usd=1.0))
        s.set_budget("acme/bot", Budget(usd=0.5))
        s.reserve("held", ("acme", "acme/bot"), 0.25, ttl_s=600)
        yield s


def _books(store) -> tuple:
    return tuple(store.state(s) for s in store.scopes()), store.open_reservations()


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"usd": -1.0}, "finite number of USD >= 0"),
        ({"usd": math.nan}, "finite number of USD >= 0"),
        ({"usd": math.inf}, "finite number of USD >= 0"),
        ({"usd": MAX_USD * 2}, "exceeds the largest amount"),
        ({"usd": 1.0, "horizon": 0}, r"horizon must be a number of requests in 1\.\."),
        ({"usd": 1.0, "horizon": 10**400}, r"horizon must be a number of requests"),
        ({"usd": 1.0, "period_s": math.nan}, r"period_s must be a number of seconds"),
        ({"usd": 1.0, "period_s": -86400}, r"period_s must be a number of seconds"),
        ({"usd": 1.0, "period_s": 5e-324}, r"period_s must be a number of seconds"),
        ({"usd": 1.0, "horizon_s": math.inf}, r"horizon_s must be a number of seconds"),
        ({"usd": 1.0, "daily": True}, "Extra inputs are not permitted"),
    ],
)
def test_a_malformed_budget_is_refused_before_it_reaches_the_ledger(fields, problem):
    with pytest.raises(ValidationError, match=problem):
        Budget(**fields)


def test_a_budget_must_be_a_budget(store):
    router = Router(CANDIDATES, store=store)
    before = _books(store)
    with pytest.raises(TypeError, match="budget must be a Budget"):
        router.set_budget("acme", {"usd": 5.0})
    with pytest.raises(ValueError, match="scope must be a non-empty path"):
        router.set_budget("acme//bot", Budget(usd=5.0))
    assert _books(store) == before


@pytest.mark.parametrize("budget", [5.0, "5", {"usd": 5.0}, True])
def test_a_default_budget_that_is_not_a_budget_is_refused_at_construction(budget):
    # Accepted, it failed only at the first call, deep in the ledger ("'float' object has no attribute 'period_s'").
    with pytest.raises(TypeError, match=r"default_budget must be a Budget \(e\.g\. Budget\(usd=5\.0\)\) or None"):
        Router(CANDIDATES, default_budget=budget)


def test_one_candidate_not_in_a_list_is_refused_by_name():
    # A Candidate iterates as its fields: without this check the error spoke of a tuple.
    with pytest.raises(TypeError, match="a sequence of Candidate, got one Candidate: put it in a list"):
        Router(CANDIDATES[0])


@pytest.mark.parametrize("amount", [-0.01, math.nan, math.inf, MAX_USD * 2])
def test_a_bad_reservation_amount_changes_nothing(store, amount):
    before = _books(store)
    with pytest.raises(ValueError, match="reservation amount"):
        store.reserve("r", ("acme", "acme/bot"), amount, ttl_s=60)
    assert _books(store) == before


@pytest.mark.parametrize(
    "scopes, ttl_s, problem",
    [((), 60, "distinct, non-empty scope names"), (("acme", "acme"), 60, "distinct"),
     (("acme",), 0, "ttl_s must be a positive"), (("acme",), math.nan, "ttl_s must be a positive")],
)
def test_a_malformed_reservation_changes_nothing(store, scopes, ttl_s, problem):
    before = _books(store)
    with pytest.raises(ValueError, match=problem):
        store.reserve("r", scopes, 0.1, ttl_s=ttl_s)
    assert _books(store) == before


@pytest.mark.parametrize(
    "rid, scopes, problem",
    [("r", "acme", r"not one name: pass \['acme'\]"), (("r",), ("acme",), "must be a non-empty str"),
     ("", ("acme",), "must be a non-empty str")],
)
def test_a_lone_scope_name_or_a_bad_reservation_id_is_refused_alike_by_every_store(store, rid, scopes, problem):
    # A lone "acme" would be read letter by letter and hold money in scopes "a", "c", "m", "e".
    before = _books(store)
    with pytest.raises(TypeError, match=problem):
        store.reserve(rid, scopes, 0.1, ttl_s=60)
    assert _books(store) == before


@pytest.mark.parametrize("rid, error", [(b"r", TypeError), (None, TypeError), (["r"], TypeError),
                                        ("r\x00", ValueError), ("bad\ud800", ValueError)])
def test_a_bad_reservation_id_is_refused_alike_by_every_store_whatever_the_operation(store, rid, error):
    # Redis took b"r" for "r" and released that hold; SQLite and PostgreSQL raised their own errors.
    store.reserve("r", ("acme",), 0.1, ttl_s=60)
    before = _books(store)
    for operation in (lambda: store.release(rid), lambda: store.commit(rid, 0.05),
                      lambda: store.reserve(rid, ("acme",), 0.1, ttl_s=60)):
        with pytest.raises(error, match="reservation id"):
            operation()
    assert _books(store) == before


@pytest.mark.parametrize("actual", [-0.01, math.nan, math.inf])
def test_a_bad_actual_cost_changes_nothing_and_keeps_the_hold(store, actual):
    before = _books(store)
    with pytest.raises(ValueError, match="actual cost"):
        store.commit("held", actual, "m")
    assert _books(store) == before
    assert store.commit("held", 0.1, "m") is True  # the reservation is still there to settle


def test_a_non_finite_lambda_changes_nothing(store):
    store.adjust_lambda("acme", 1.5)
    before = _books(store)
    with pytest.raises(ValueError, match="lambda must be finite"):
        store.adjust_lambda("acme", math.nan)
    assert _books(store) == before


@pytest.mark.parametrize("field", ["input_price", "output_price"])
@pytest.mark.parametrize("price", [-1.0, math.nan, math.inf])
def test_a_negative_or_nan_price_is_refused(field, price):
    fields = {"name": "m", "input_price": 1.0, "output_price": 2.0, field: price}
    with pytest.raises(ValidationError, match="price must be a finite number >= 0"):
        Candidate(**fields)


@pytest.mark.parametrize("cost", [-0.01, math.nan, math.inf])
def test_a_bad_settled_cost_changes_nothing(store, cost):
    router = Router(CANDIDATES, store=store)
    decision = router.decide("hi", "acme/bot")
    before = _books(store)
    with pytest.raises(ValueError, match="cost must be finite"):
        router.settle(decision, cost=cost)
    assert _books(store) == before


def test_an_unknown_scope_in_strict_mode_is_refused(store):
    router = Router(CANDIDATES, store=store, strict_scopes=True)
    before = _books(store)
    with pytest.raises(UnknownScope, match="'acme/ghost' has no budget and the router is strict"):
        router.decide(PROMPT, "acme/ghost")
    with pytest.raises(UnknownScope, match="'nobody'"):
        router.decide(PROMPT, "nobody")
    assert _books(store) == before


@pytest.mark.parametrize(
    "request_, problem",
    [("", "the prompt is empty"), ("   \n", "the prompt is empty"), ([], "non-empty list of messages"),
     ([{"content": "hi"}], r"messages\[0\] must be a mapping with 'role'"),
     (["hi"], r"messages\[0\] must be a mapping"),
     # Content that would be counted as a few tokens and slip past the window check and the cap.
     ([{"role": "user", "content": b"x " * 50_000}], r"messages\[0\] content must be a str or a list"),
     ([{"role": "user", "content": {"type": "text", "text": "x " * 50_000}}], "got dict"),
     ([{"role": "user", "content": [["x " * 50_000]]}], r"content\[0\] must be a str or a mapping")],
)
def test_empty_or_malformed_messages_are_refused(store, request_, problem):
    router = Router(CANDIDATES, store=store)
    before = _books(store)
    with pytest.raises(RoutingError, match=problem):
        router.decide(request_, "acme/bot")
    assert _books(store) == before


def test_a_prompt_larger_than_every_context_window_is_refused(store):
    router = Router(CANDIDATES, store=store)
    before = _books(store)
    with pytest.raises(NoFeasibleCandidate) as info:
        router.decide("budget " * 120, "acme/bot")
    assert "exceeds its context window of 50" in str(info.value)
    assert "exceeds its context window of 80" in str(info.value)
    assert _books(store) == before


@pytest.mark.parametrize(
    "url, problem",
    [
        ("", "no scheme"),
        ("ledger.db", "no scheme"),
        ("mysql://db.example/ledger", "unknown scheme 'mysql://'"),
        ("memory://elsewhere", "memory:// takes no host or path"),
        ("sqlite://", "no file path"),
        ("sqlite:///", "no file path"),
        ("sqlite://fileserver/ledger.db", "names a host"),
        ("sqlite:///ledger.db?mode=ro", r"unknown option\(s\) \['mode'\]"),
        ("sqlite:///ledger.db#main", "fragment"),
        ("redis://", "no host"),
        ("redis://localhost:port/0", "Port could not be cast"),
        ("redis://localhost:6379/zero", "the database must be a number"),
        ("redis://localhost:6379/0?prefix=a:&prefix=b:", "given twice"),
        ("redis://localhost:6379/0?timeout=3", r"unknown option\(s\) \['timeout'\]"),
        ("postgresql://localhost:port/test", "Port could not be cast"),
        ("postgres://localhost/test?sslmode=require", r"unknown option\(s\) \['sslmode'\]"),
    ],
)
def test_a_malformed_store_url_is_refused_and_creates_nothing(url, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=problem) as info:
        open_store(url)
    assert str(info.value).startswith(f"malformed ledger store URL {url!r}")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_sqlite_option_or_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="synchronous must be one of"):
        open_store("sqlite:///ledger.db?synchronous=sometimes")
    with pytest.raises(ValueError, match="cannot open the SQLite ledger"):
        open_store(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="LedgerStore or a URL string"):
        open_store(42)


def test_a_file_that_is_not_a_ledger_is_left_alone(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n")
    with pytest.raises(ValueError, match="cannot open the SQLite ledger .*notes.db: file is not a database"):
        open_store(f"sqlite:///{path}")
    assert path.read_text() == "these are my notes, not a database\n"


@pytest.mark.parametrize("ttl", [0, 0.05, -1, math.inf, math.nan, "60", True])
def test_a_request_with_a_malformed_hold_lifetime_is_refused_before_anything_is_held(ttl):
    """As the router's own reservation_ttl_s: a number of seconds >= 0.1 (0 used to mean the
    router's default, silently; in a batch a bad one failed every decision's hold)."""
    router = Router([Candidate(name="a", input_price=1.0, output_price=2.0, prior_quality=0.7)])
    router.set_budget("s", Budget(usd=1.0))
    with pytest.raises(RoutingError, match="reservation_ttl_s must be a number of seconds >= 0.1"):
        router.decide("hello", "s", reservation_ttl_s=ttl)
    assert router.budget_state("s").reserved == 0
    held = router.decide("hello", "s", reservation_ttl_s=0.1)
    assert router.budget_state("s").reserved == pytest.approx(held.reserved)
