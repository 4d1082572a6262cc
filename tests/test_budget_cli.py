"""`omniroute budget show|set`: refuses missing SQLite ledgers, escapes hostile names, hides passwords."""

from __future__ import annotations

import argparse
import json

import pytest
from ledger_support import postgres_admin, require_redis, store_url
from pydantic import ValidationError

from shared_core import Budget, Candidate, Router
from shared_core.cli import error_message, main
from shared_core.stores import open_store

HOSTILE_SCOPE = "acme/\x1b[2J\x1b[31mevil\r\x00\u202etxt.exe"
HOSTILE_MODEL = "gpt\x1b]0;pwned\x07-4o\u202e"


def _no_control_characters(text: str) -> bool:
    """True when `text` holds nothing a terminal would act on except line breaks."""
    return all(ch.isprintable() or ch == "\n" for ch in text)


# ----------------------------------------------------------------- a ledger path that does not exist
def test_show_refuses_a_missing_sqlite_ledger_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "ledgr.db"  # a typo of ledger.db
    assert main(["budget", "show", "--store", f"sqlite:///{missing}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no SQLite ledger at {missing}" in captured.err
    assert "--create" in captured.err and "never creates" in captured.err
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_show_of_a_scope_in_a_missing_ledger_also_fails(tmp_path, capsys):
    missing = tmp_path / "nope.db"
    assert main(["budget", "show", "acme", "--json", "--store", f"sqlite:///{missing}"]) == 2
    assert f"no SQLite ledger at {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_set_refuses_a_missing_ledger_without_create(tmp_path, capsys):
    missing = tmp_path / "ledger.db"
    assert main(["budget", "set", "acme", "--usd", "5", "--store", f"sqlite:///{missing}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no SQLite ledger at {missing}" in captured.err and "pass --create" in captured.err
    assert not missing.exists()


def test_a_relative_missing_path_is_shown_resolved(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["budget", "show", "--store", "sqlite:///typo.db"]) == 2
    err = capsys.readouterr().err
    assert "no SQLite ledger at typo.db" in err and str(tmp_path / "typo.db") in err
    assert not (tmp_path / "typo.db").exists()


def test_set_with_create_makes_the_ledger_and_later_commands_use_it(tmp_path, capsys):
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    assert main(["budget", "set", "acme", "--usd", "5", "--create", "--store", url]) == 0
    assert path.exists()
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["acme", "5.000000"]

    # Once it exists, neither command needs --create; --create on an existing ledger keeps its contents.
    assert main(["budget", "set", "acme/bot", "--usd", "2", "--store", url]) == 0
    assert main(["budget", "set", "acme", "--usd", "7", "--create", "--store", url]) == 0
    capsys.readouterr()
    assert main(["budget", "show", "--json", "--store", url]) == 0
    shown = {s["scope"]: s["budget"]["usd"] for s in json.loads(capsys.readouterr().out)}
    assert shown == {"acme": 7.0, "acme/bot": 2.0}


def test_show_of_an_existing_empty_ledger_says_so(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    open_store(url).close()
    assert main(["budget", "show", "--store", url]) == 0
    assert capsys.readouterr().out.strip() == f"no budgets in {url}"


def test_open_store_must_exist_names_the_missing_file(tmp_path):
    missing = tmp_path / "x.db"
    with pytest.raises(FileNotFoundError) as caught:
        open_store(f"sqlite:///{missing}", must_exist=True)
    assert caught.value.filename == str(missing) and not missing.exists()
    open_store(f"sqlite:///{missing}").close()  # the default still creates it
    open_store(f"sqlite:///{missing}", must_exist=True).close()
    open_store("memory://", must_exist=True).close()


# ----------------------------------------------------------------- hostile scope and model names
def _hostile_ledger(url: str) -> None:
    """A ledger holding hostile names, as one written before scope names were validated (or by
    another program) may: today's stores refuse such a scope, the CLI must still show it safely."""
    from unittest import mock

    import shared_core.stores.base as store_base

    def unchecked(scope: str) -> tuple[str, ...]:
        parts = scope.split("/")
        return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))

    store = open_store(url)
    try:
        from shared_core.budget import Budget

        with mock.patch.object(store_base, "scope_chain", unchecked):
            store.set_budget(HOSTILE_SCOPE, Budget(usd=5.0))
        store.reserve("r1", ["acme", HOSTILE_SCOPE], 1.0, ttl_s=60)
        store.commit("r1", 0.25, HOSTILE_MODEL)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_show_escapes_control_characters_in_scope_and_model_names(kind, tmp_path, capsys):
    with store_url(kind, tmp_path) as url:
        assert main(["budget", "set", "acme", "--usd", "50", "--create", "--store", url]) == 0
        _hostile_ledger(url)
        capsys.readouterr()

        assert main(["budget", "show", "--store", url]) == 0
        out = capsys.readouterr().out
        assert _no_control_characters(out), out
        assert "acme/\\x1b[2J\\x1b[31mevil\\r\\x00\\u202etxt.exe " in out
        assert "  gpt\\x1b]0;pwned\\x07-4o\\u202e " in out
        assert len(out.splitlines()) == 1 + 2 + 2  # header, two scopes, one model line under each

        # JSON output escapes them too (and decodes back to the real names).
        assert main(["budget", "show", "acme", "--json", "--store", url]) == 0
        out = capsys.readouterr().out
        assert _no_control_characters(out)
        states = {s["scope"]: s for s in json.loads(out)}
        assert states[HOSTILE_SCOPE]["by_model"] == {HOSTILE_MODEL: {"usd": 0.25, "calls": 1}}


def test_the_table_columns_line_up_with_escaped_names(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert main(["budget", "set", "acme", "--usd", "50", "--create", "--store", url]) == 0
    _hostile_ledger(url)
    capsys.readouterr()
    assert main(["budget", "show", "--store", url]) == 0
    header, acme, _, hostile, model = capsys.readouterr().out.splitlines()
    budget_end = header.index("budget $") + len("budget $")
    for row, name, usd in [(acme, "acme", "50.000000"), (hostile, "acme/\\x1b[2J", "5.000000")]:
        assert row[: budget_end - 13].startswith(name) and row[budget_end - 13] == " "
        assert row[budget_end - 12 : budget_end].strip() == usd
    spent_end = header.index("spent $") + len("spent $")
    assert model[spent_end - 12 : spent_end].strip() == "0.250000"


def test_errors_escape_hostile_scope_names(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert main(["budget", "set", "acme", "--usd", "1", "--create", "--store", url]) == 0
    capsys.readouterr()
    assert main(["budget", "show", "ghost\x1b[2J\u202e", "--store", url]) == 2
    err = capsys.readouterr().err
    assert _no_control_characters(err)
    assert "scope must be printable UTF-8 text, got 'ghost\\x1b[2J\\u202e'" in err
    assert main(["budget", "set", "bad//\x1b[1A\r", "--usd", "1", "--store", url]) == 2
    err = capsys.readouterr().err
    assert _no_control_characters(err) and "scope must be a non-empty path" in err


def test_a_hostile_sqlite_path_is_escaped_in_the_error(tmp_path, capsys):
    missing = f"{tmp_path}/\x1b[2Jx\x07\u202e.db"
    assert main(["budget", "show", "--store", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert _no_control_characters(err) and "\\x1b[2Jx\\x07\\u202e.db" in err


# ----------------------------------------------------------------- passwords in store URLs
@pytest.mark.parametrize(
    "url, shown",
    [
        # A bad port: open_store's message quotes the whole URL.
        ("redis://user:s3cret-pw@127.0.0.1:notaport/0", "redis://user:***@127.0.0.1:notaport/0"),
        # An option open_store does not accept: the password sits in the query.
        ("redis://127.0.0.1:6379/0?password=s3cret-pw", "redis://127.0.0.1:6379/0?password=***"),
        ("postgres://admin:s3cret-pw@db.example:notaport/ledger", "postgres://admin:***@db.example:notaport/ledger"),
        ("redis://:s3cret-pw@/0", "redis://:***@/0"),
    ],
)
def test_malformed_urls_are_reported_without_their_password(url, shown, capsys):
    for argv in (["budget", "show"], ["budget", "set", "acme", "--usd", "1", "--create"]):
        assert main([*argv, "--store", url]) == 2
        captured = capsys.readouterr()
        assert "s3cret-pw" not in captured.out + captured.err
        assert "malformed ledger store URL" in captured.err and shown in captured.err


@pytest.mark.parametrize("url", ["redis://user:s3cret-pw@127.0.0.1:1/0", "postgresql://user:s3cret-pw@127.0.0.1:1/test"])
def test_an_unreachable_store_with_a_password_is_reported_without_it(url, capsys):
    assert main(["budget", "show", "--store", url]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err and "s3cret-pw" not in err


def test_a_wrong_redis_password_is_reported_without_it(tmp_path, capsys):
    with store_url("redis", tmp_path) as url:
        url = url.replace("redis://", "redis://nobody:s3cret-pw@")
        assert main(["budget", "show", "--store", url]) == 1
        captured = capsys.readouterr()
        assert "s3cret-pw" not in captured.out + captured.err
        assert captured.err.startswith("omniroute budget: error: Redis ledger at ")


@pytest.mark.parametrize("kind, start, with_password", [
    ("redis", "redis://", "redis://default:s3cret-pw@"),
    ("postgres", "postgresql://postgres@", "postgresql://postgres:s3cret-pw@"),
])
def test_messages_about_a_store_with_a_password_redact_it(kind, start, with_password, tmp_path, capsys):
    with store_url(kind, tmp_path) as url:
        # The test servers take any password (Redis's default user has none, PostgreSQL trusts
        # local connections): the command really runs.
        url = url.replace(start, with_password)
        shown = url.replace("s3cret-pw", "***")
        if kind == "postgres":  # a schema holding no ledger is refused, as a missing SQLite file is
            assert main(["budget", "show", "--store", url]) == 2
            captured = capsys.readouterr()
            assert "no OmniRoute ledger" in captured.err and "--create" in captured.err
            assert "s3cret-pw" not in captured.out + captured.err
            with postgres_admin() as admin:  # and show created nothing
                schema = url.rsplit("schema=", 1)[1]
                assert admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
            assert main(["budget", "set", "acme", "--usd", "3", "--store", url]) == 2
            assert main(["budget", "set", "acme", "--usd", "3", "--create", "--store", url]) == 0
        else:
            assert main(["budget", "show", "--store", url]) == 0
            assert capsys.readouterr().out.strip() == f"no budgets in {shown}"
            assert main(["budget", "set", "acme", "--usd", "3", "--store", url]) == 0  # Redis keys need no --create
        assert main(["budget", "show", "ghost", "--store", url]) == 2
        captured = capsys.readouterr()
        assert "s3cret-pw" not in captured.out + captured.err
        assert f"scope 'ghost' has no budget in {shown}" in captured.err


def test_redaction_of_text_with_several_urls():
    from shared_core.commands.budget import redact, redact_url

    assert redact_url("redis://u:p@ss@h:1/0?prefix=a:") == "redis://u:***@h:1/0?prefix=a:"
    assert redact_url("redis://u@h:1/0") == "redis://u@h:1/0"  # no password, nothing to hide
    assert redact("see rediss://a:b@h:1/0 and redis://h:2/0") == "see rediss://a:***@h:1/0 and redis://h:2/0"


def test_set_keeps_spend_unless_asked_to_reset(tmp_path, capsys):
    from shared_core.budget import Budget

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert main(["budget", "set", "acme", "--usd", "10", "--create", "--store", url]) == 0
    store = open_store(url)
    try:
        store.reserve("r1", ["acme"], 5.0, ttl_s=60)
        store.commit("r1", 4.0, "m")
    finally:
        store.close()
    assert main(["budget", "set", "acme", "--usd", "10", "--period-s", "86400", "--store", url]) == 0
    store = open_store(url)
    assert store.state("acme").committed == 4.0  # a changed period keeps what was spent
    store.close()
    assert main(["budget", "set", "acme", "--usd", "10", "--period-s", "86400", "--reset", "--store", url]) == 0
    store = open_store(url)
    try:
        assert store.state("acme").committed == 0.0 and store.state("acme").budget == Budget(usd=10, period_s=86400)
    finally:
        store.close()


def test_set_keeps_the_options_not_given_and_none_clears_one(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert main(["budget", "set", "acme", "--usd", "10", "--period-s", "86400", "--create", "--store", url]) == 0
    assert main(["budget", "set", "acme", "--reset", "--store", url]) == 0  # only resets: the period stays
    assert main(["budget", "set", "acme", "--usd", "20", "--store", url]) == 0
    store = open_store(url)
    assert store.state("acme").budget == Budget(usd=20.0, period_s=86400.0)
    store.close()
    assert main(["budget", "set", "acme", "--period-s", "none", "--store", url]) == 0
    store = open_store(url)
    assert store.state("acme").budget == Budget(usd=20.0)
    store.close()
    capsys.readouterr()
    assert main(["budget", "set", "new", "--period-s", "60", "--store", url]) == 2
    assert "has no budget yet: give --usd" in capsys.readouterr().err


def test_set_refuses_a_memory_ledger(capsys):
    assert main(["budget", "set", "acme", "--usd", "1", "--store", "memory://"]) == 2
    assert "lives inside one process" in capsys.readouterr().err


def test_show_says_which_scopes_are_forgotten_when_idle(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    store = open_store(url)
    store.set_budget("acme", Budget(usd=1.0))
    store.set_budget("acme/s", Budget(usd=1.0), idle_ttl_s=3600)
    store.close()
    capsys.readouterr()
    assert main(["budget", "show", "--store", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "idle ttl" in lines[0] and lines[2].split()[-1] == "3600s" and lines[1].split()[-1] == "-"
    assert main(["budget", "show", "--json", "--store", url]) == 0
    assert [s["idle_ttl_s"] for s in json.loads(capsys.readouterr().out)] == [None, 3600.0]


def test_a_budget_set_here_is_never_forgotten_unless_asked(tmp_path):
    # A session made from a router's default budget is forgettable; once an operator sets its budget
    # it is theirs: forgetting it would bring the (larger) default back on the session's next request.
    url = f"sqlite:///{tmp_path / 'l.db'}"
    now = [1_000.0]
    router = Router([Candidate(name="m", input_price=1.0, output_price=1.0, prior_quality=0.5)],
                    store=open_store(url, clock=lambda: now[0]), default_budget=Budget(usd=0.05),
                    session_idle_ttl_s=2)
    router.release(router.decide("hi", "vip"))
    assert main(["budget", "set", "vip", "--usd", "0.001", "--store", url]) == 0
    now[0] += 10
    router.release(router.decide("hi", "other"))  # any operation sweeps idle scopes
    assert router.budget_state("vip").budget.usd == 0.001 and router.budget_state("vip").idle_ttl_s is None
    assert main(["budget", "set", "vip", "--idle-ttl-s", "3600", "--store", url]) == 0
    assert router.budget_state("vip").idle_ttl_s == 3600.0
    assert main(["budget", "set", "vip", "--usd", "0.002", "--idle-ttl-s", "none", "--store", url]) == 0
    assert (router.budget_state("vip").budget.usd, router.budget_state("vip").idle_ttl_s) == (0.002, None)


def test_json_shows_the_pacers_theta_from_which_a_decisions_lambda_follows(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    router = Router([Candidate(name="lean", input_price=0.5, output_price=1.5, prior_quality=0.6),
                     Candidate(name="rich", input_price=5.0, output_price=15.0, prior_quality=0.9)], store=url)
    budget = Budget(usd=0.01, horizon=100)
    router.set_budget("paced", budget)
    for _ in range(5):  # dearer than the budget's even share: θ rises from its start
        router.settle(router.decide("Summarise the quarterly report.", "paced"), output_tokens=400)
    state = router.budget_state("paced")
    assert state is not None and state.lam is not None and state.lam != router.pacer.initial

    assert main(["budget", "show", "paced", "--json", "--store", url]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert "lambda" not in shown and shown["theta"] == state.lam
    # A cold pacer's λ (quality per USD) is θ over the budget's even share per request.
    decision = router.decide("Summarise the quarterly report.", "paced")
    assert decision.lam == pytest.approx(shown["theta"] / (budget.usd / budget.horizon))
    router.release(decision)


def test_a_redis_database_the_server_does_not_have_is_a_one_line_error(capsys):
    require_redis()
    assert main(["budget", "show", "--store", "redis://127.0.0.1:6379/99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omniroute budget: error: Redis ledger at redis://127.0.0.1:6379/99: the server has no "
                          "such database") and err.count("\n") == 1


@pytest.mark.parametrize("option, value, message", [
    ("--usd", "-1", "--usd: budget usd must be a finite number of USD >= 0, got -1.0"),
    ("--horizon", "0", "--horizon: horizon must be a number of requests in 1.."),
    ("--horizon-s", "0", "--horizon-s: horizon_s must be a number of seconds in [0.001, "),
    ("--period-s", "-3", "--period-s: period_s must be a number of seconds in [0.001, "),
    ("--idle-ttl-s", "-1", "--idle-ttl-s must be None or a number of seconds in [1.0, "),
])
def test_a_bad_budget_value_is_one_line_naming_the_option(option, value, message, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    assert main(["budget", "set", "acme", "--usd", "5", "--create", "--store", url]) == 0
    capsys.readouterr()
    assert main(["budget", "set", "acme", option, value, "--store", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"omniroute budget: error: {message}"), captured.err
    assert captured.err.count("\n") == 1 and "pydantic" not in captured.err and "[type=" not in captured.err
    assert main(["budget", "show", "--json", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out)[0]["budget"]["usd"] == 5.0


def test_a_bad_value_the_user_did_not_give_is_named_by_its_field_not_an_option():
    # A budget read back from the store with a value newer limits refuse: --horizon was not passed.
    with pytest.raises(ValidationError) as info:
        Budget(usd=3.0, horizon=0)
    given = argparse.Namespace(usd=3.0, horizon=None, period_s=100.0)
    assert error_message(info.value, given).startswith("Budget horizon: horizon must be a number of requests")
    assert error_message(info.value, argparse.Namespace(horizon=0)).startswith("--horizon: horizon must be")


def test_show_says_what_each_budget_is_paced_over(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    store = open_store(url)
    store.set_budget("by-requests", Budget(usd=1.0, horizon=1000))
    store.set_budget("by-time", Budget(usd=1.0, horizon_s=86_400))
    store.set_budget("unpaced", Budget(usd=1.0))
    store.close()
    capsys.readouterr()
    assert main(["budget", "show", "--store", url]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    end = header.index("horizon") + len("horizon")  # the column is right-aligned under its title
    assert {line.split()[0]: line[end - 11:end].strip() for line in lines} == {
        "by-requests": "1000 req", "by-time": "86400s", "unpaced": "-"}
