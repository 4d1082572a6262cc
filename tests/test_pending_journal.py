"""Commits the ledger could not take survive the process in a journal (issue 13, item 3)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared_core import Budget, Candidate, Router
from shared_core.budget import LedgerUnavailable
from shared_core.pending import PendingCommit, PendingJournal
from shared_core.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]


def _cands() -> list[Candidate]:
    return [Candidate(name="small", input_price=1.0, output_price=2.0, prior_quality=0.5, max_output_tokens=100)]


class BlinkingSQLite(SQLiteStore):
    """A SQLite ledger whose commits fail while `down` is set, as an unreachable Redis would."""

    down = False

    def commit(self, reservation_id, actual, model=None):
        if self.down:
            raise LedgerUnavailable("redis: connection refused")
        return super().commit(reservation_id, actual, model)


# A process that settles while the ledger is down, then dies by SIGKILL before it is back.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{tests!r}, {root!r}]
    from test_pending_journal import BlinkingSQLite, _cands
    from shared_core import Budget, Router
    store = BlinkingSQLite({ledger!r})
    router = Router(_cands(), store=store, pending_journal={journal!r})
    router.set_budget("acme", Budget(usd=1.0))
    costs = []
    for _ in range(3):
        decision = router.decide("Hello.", "acme", max_tokens=10)
        store.down = True
        costs.append(router.settle(decision, output_tokens=10))
        store.down = False
    print(repr(sum(costs)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kept_commits_survive_a_sigkill_and_are_recorded_once(tmp_path, caplog):
    ledger, journal = tmp_path / "ledger.db", tmp_path / "kept" / "pending.jsonl"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT), ledger=str(ledger),
                                             journal=str(journal))],
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    spent = float(child.stdout.strip())
    store = SQLiteStore(ledger)
    try:
        assert store.state("acme").committed == 0.0  # nothing reached the ledger before the crash
        with caplog.at_level(logging.WARNING, logger="omniroute"):
            router = Router(_cands(), store=store, pending_journal=journal)
        assert "3 commit(s) kept" in caplog.text
        assert router.retry_pending() == 0
        state = store.state("acme")
        assert state.committed == pytest.approx(spent) and state.requests == 3 and state.reserved == 0
        # Replaying again (another process, say, holding the same journal) charges nothing twice.
        assert Router(_cands(), store=store, pending_journal=journal).retry_pending() == 0
        assert store.state("acme").committed == pytest.approx(spent)
    finally:
        store.close()


def test_a_journal_replays_in_order_and_keeps_what_the_ledger_still_refuses(tmp_path):
    journal = PendingJournal(tmp_path / "p.jsonl")
    for i in range(3):
        journal.keep(PendingCommit(f"r{i}", ("acme",), "small", 0.1 * i, 1_700_000_000.0))
    seen = []

    def commit(entry: PendingCommit) -> None:
        if entry.reservation_id == "r1":
            raise LedgerUnavailable("still down")
        seen.append(entry.reservation_id)

    assert journal.replay(commit) == 2 and seen == ["r0"]
    assert [e.reservation_id for e in journal._read()] == ["r1", "r2"]
    assert journal.replay(lambda e: seen.append(e.reservation_id)) == 0 and seen == ["r0", "r1", "r2"]
    assert journal.path.read_text() == ""


def test_a_torn_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    journal = PendingJournal(path)
    journal.keep(PendingCommit("r0", ("acme", "acme/s"), "small", 0.25, 1_700_000_000.0))
    with open(path, "a") as f:
        f.write('{"reservation_id": "r1", "sco')  # the process died mid-write
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        kept = journal._read()
    assert [(e.reservation_id, e.scopes, e.cost_usd) for e in kept] == [("r0", ("acme", "acme/s"), 0.25)]
    assert "skipped line 2" in caplog.text


def test_a_journal_that_cannot_be_written_is_an_error_not_silence(tmp_path, caplog):
    store = BlinkingSQLite(tmp_path / "l.db")
    journal = tmp_path / "p.jsonl"
    router = Router(_cands(), store=store, pending_journal=journal)
    router.set_budget("acme", Budget(usd=1.0))
    decision = router.decide("Hello.", "acme", max_tokens=10)
    store.down = True
    os.mkdir(journal.with_name("p.jsonl.lock.d"))
    journal.with_name("p.jsonl.lock").symlink_to(journal.with_name("p.jsonl.lock.d"))  # O_NOFOLLOW refuses it
    with caplog.at_level(logging.ERROR, logger="omniroute"):
        router.settle(decision, output_tokens=10)
    assert "the money is NOT recorded" in caplog.text
    store.close()


def test_a_directory_is_not_a_journal(tmp_path):
    with pytest.raises(ValueError, match="must be a file"):
        Router(_cands(), pending_journal=tmp_path)
