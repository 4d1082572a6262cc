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
from ledger_support import Blinking

from shared_core import Budget, Candidate, Router
from shared_core.budget import LedgerUnavailable
from shared_core.pending import PendingCommit, PendingJournal
from shared_core.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]


def _cands() -> list[Candidate]:
    return [Candidate(name="small", input_price=1.0, output_price=2.0, prior_quality=0.5, max_output_tokens=100)]


class BlinkingSQLite(Blinking, SQLiteStore):
    """A SQLite ledger whose commits and releases fail while `down` is set."""


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
        journal.keep(PendingCommit(f"r{i}", ("acme",), "small", 0.1 * i, 1_700_000_000.0, "memory://"))
    seen = []

    def commit(entry: PendingCommit) -> None:
        if entry.reservation_id == "r1":
            raise LedgerUnavailable("still down")
        seen.append(entry.reservation_id)

    assert journal.replay(commit, "memory://") == 2 and seen == ["r0"]
    assert [e.reservation_id for e in journal._read()[0]] == ["r1", "r2"]
    assert journal.replay(lambda e: seen.append(e.reservation_id), "memory://") == 0 and seen == ["r0", "r1", "r2"]
    assert journal.path.read_text() == ""


def test_a_torn_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    journal = PendingJournal(path)
    journal.keep(PendingCommit("r0", ("acme", "acme/s"), "small", 0.25, 1_700_000_000.0, "memory://"))
    with open(path, "a") as f:
        f.write('{"reservation_id": "r1", "sco')  # the process died mid-write
    journal.keep(PendingCommit("r2", ("acme",), "small", 0.5, 1_700_000_001.0, "memory://"))  # not glued to it
    with open(path, "ab") as f:
        f.write(b"\xff\xfe" + b"[" * 100_000 + b"\n")  # undecodable, then absurdly nested
    journal.keep(PendingCommit("r3", ("acme",), "small", 0.75, 1_700_000_002.0, "memory://"))
    with caplog.at_level(logging.WARNING, logger="omniroute"):
        kept, clean = journal._read()
    assert [(e.reservation_id, e.cost_usd) for e in kept] == [("r0", 0.25), ("r2", 0.5), ("r3", 0.75)]
    assert "skipped line 2" in caplog.text and "skipped line 4" in caplog.text


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


def test_a_short_write_leaves_no_half_line_and_says_so(tmp_path, monkeypatch):
    import shared_core.pending as pending

    journal = PendingJournal(tmp_path / "p.jsonl")
    journal.keep(PendingCommit("r1", ("s",), "m", 0.5, 1.0, "memory://"))
    real_write = os.write
    calls = []

    def disk_full(fd, data):  # writes 10 bytes, then the disk is full
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pending.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        journal.keep(PendingCommit("r2", ("s",), "m", 0.25, 2.0, "memory://"))
    monkeypatch.setattr(pending.os, "write", real_write)
    journal.keep(PendingCommit("r3", ("s",), "m", 0.125, 3.0, "memory://"))
    assert [e.reservation_id for e in journal._read()[0]] == ["r1", "r3"]


def test_each_router_replays_only_its_own_ledgers_commits(tmp_path):
    journal = tmp_path / "shared.jsonl"
    east, west = BlinkingSQLite(tmp_path / "east.db"), BlinkingSQLite(tmp_path / "west.db")
    try:
        r_east = Router(_cands(), store=east, pending_journal=journal)
        r_west = Router(_cands(), store=west, pending_journal=journal)
        for router in (r_east, r_west):
            router.set_budget("acme", Budget(usd=10.0))
        decision = r_east.decide("Hello.", "acme", max_tokens=10)
        east.down = True
        spent = r_east.settle(decision, output_tokens=10)
        r_west.settle(r_west.decide("Hello.", "acme", max_tokens=10), output_tokens=10)  # replays nothing of east's
        assert west.state("acme").requests == 1
        east.down = False
        assert r_east.retry_pending() == 0
        assert east.state("acme").committed == pytest.approx(spent) and east.state("acme").reserved == 0
    finally:
        east.close()
        west.close()


class LostReply(SQLiteStore):
    """A ledger whose commits land but whose replies are lost while `lose` is set."""

    lose = False

    def commit(self, reservation_id, actual, model=None):
        done = super().commit(reservation_id, actual, model)
        if self.lose:
            raise LedgerUnavailable("redis: timeout reading the reply")
        return done

    def commit_books(self, reservation_id, actual, model=None, **books):
        done = super().commit_books(reservation_id, actual, model, **books)
        if self.lose:
            raise LedgerUnavailable("redis: timeout reading the reply")
        return done


def test_money_for_a_forgotten_reservation_is_recorded_once_through_lost_replies(tmp_path):
    from ledger_support import FakeClock

    clock = FakeClock()
    store = LostReply(tmp_path / "l.db", clock=clock, retention_s=60)
    try:
        router = Router(_cands(), store=store)
        router.set_budget("acme", Budget(usd=1.0))
        decision = router.decide("Hello.", "acme", max_tokens=10)
        store.release(decision.id)
        clock.advance(61)  # the ledger forgets the finished reservation; the retries below take no ledger time
        store.lose = True
        router.commit(decision, cost=0.25)  # retried three times, every reply lost, then kept
        store.lose = False
        assert router.retry_pending() == 0
        state = store.state("acme")
        assert (state.committed, state.requests) == (0.25, 1)
    finally:
        store.close()


def test_a_symlinked_journal_is_refused(tmp_path):
    (tmp_path / "real.jsonl").write_text("")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    with pytest.raises(ValueError, match="symbolic link"):
        Router(_cands(), pending_journal=tmp_path / "link.jsonl")


def test_a_torn_line_is_warned_about_once_then_dropped(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"reservation_id": "r2", "scopes": ["t"], "mod')
    store = BlinkingSQLite(tmp_path / "l.db")
    try:
        with caplog.at_level(logging.WARNING, logger="omniroute"):
            router = Router(_cands(), store=store, pending_journal=path)
            router.set_budget("t", Budget(usd=1.0))
            for _ in range(3):
                router.settle(router.decide("Hello.", "t", max_tokens=10), output_tokens=10)
        assert caplog.text.count("skipped line 1") == 2  # the constructor's count, then the replay that drops it
        assert path.read_bytes() == b""
    finally:
        store.close()


def test_memory_ledgers_are_told_apart_and_a_dead_processs_are_dropped(tmp_path, caplog):
    from shared_core.budget import MemoryStore

    a, b = MemoryStore(), MemoryStore()
    assert a.url != b.url and a.url.startswith(f"memory://{os.getpid()}/")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    journal = PendingJournal(tmp_path / "p.jsonl")
    journal.keep(PendingCommit("gone", ("s",), "m", 0.5, 1.0, f"memory://{dead.stdout.strip()}/abc"))
    journal.keep(PendingCommit("other", ("s",), "m", 0.5, 1.0, b.url))
    with caplog.at_level(logging.ERROR, logger="omniroute"):
        assert journal.replay(lambda e: None, a.url) == 0
    assert "whose process" in caplog.text
    assert [e.reservation_id for e in journal._read()[0]] == ["other"]
