"""Commits the ledger could not take yet, kept until it can: in memory, or in a journal file.

A call that was made has been paid for, whatever the ledger says when its cost arrives. When
the ledger cannot be reached at that moment, the router keeps the commit here and offers it
again on later commits (`Router.retry_pending`). In memory, what is kept dies with the process;
a `PendingJournal` keeps it in a file, so a router started after a crash records it.

Replaying is safe while the ledger remembers the reservation: a commit names it, and the ledger
charges a reservation once. A ledger remembers finished reservations for a bounded time and number
(`LedgerStore`: `retention_s`, `max_finished`); a commit of one it has forgotten is recorded by
`record_anew`, once, which tells from the commit's `kept_at` whether it can have counted already.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .budget import LedgerStore, LedgerUnavailable
from .stores.base import no_budget

__all__ = ["PendingCommit", "PendingCommits", "PendingJournal", "record_anew", "CLOCK_SLACK_S"]

logger = logging.getLogger("omniroute")

#: How far apart a router's clock and its ledger's (a server's, for Redis and PostgreSQL) may be when
#: `record_anew` tells whether the ledger would still remember a commit's first attempt.
CLOCK_SLACK_S = 60.0


@dataclass(frozen=True)
class PendingCommit:
    """One commit kept for later: the reservation, the scopes it held, the model and USD spent, when
    it was kept (Unix time) and the ledger it belongs to (`LedgerStore.url`)."""

    reservation_id: str
    scopes: tuple[str, ...]
    model: str
    cost_usd: float
    kept_at: float
    ledger: str

    def to_line(self) -> bytes:
        """The commit as one JSON line."""
        return (json.dumps({**asdict(self), "scopes": list(self.scopes)}, allow_nan=False) + "\n").encode()

    @classmethod
    def from_line(cls, line: bytes) -> PendingCommit:
        """A commit from its JSON line; ValueError (or KeyError, TypeError) when it is not one."""
        raw = json.loads(line.decode("utf-8"))
        return cls(
            reservation_id=str(raw["reservation_id"]), scopes=tuple(str(s) for s in raw["scopes"]),
            model=str(raw["model"]), cost_usd=float(raw["cost_usd"]), kept_at=float(raw["kept_at"]),
            ledger=str(raw["ledger"]),
        )


class PendingCommits:
    """Commits kept in this process's memory (lost if the process dies before the ledger is back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: list[PendingCommit] = []

    def keep(self, entry: PendingCommit) -> None:
        """Keep one commit."""
        with self._lock:
            self._kept.append(entry)

    def __len__(self) -> int:
        return len(self._kept)

    def replay(self, commit: Callable[[PendingCommit], None], ledger: str) -> int:
        """Offer each kept commit of `ledger` to `commit`, oldest first; how many are kept afterwards.

        A LedgerUnavailable stops the replay and keeps that commit and the rest; a commit that
        raises KeyError or ValueError (the ledger lost its scopes) cannot be recorded by any retry
        and is dropped with an ERROR log. Commits of other ledgers are kept, untouched.
        """
        with self._lock:
            kept, self._kept = self._kept, []
        left = _replay(kept, commit, ledger)
        with self._lock:
            self._kept[:0] = left
            return sum(entry.ledger == ledger for entry in self._kept)


class PendingJournal(PendingCommits):
    """Commits kept in a file (JSON lines, each fsynced) until the ledger takes them.

    Processes may share one journal, even routers on different ledgers (each replays its own
    ledger's commits): appends and replays hold an exclusive lock on `<path>.lock`, and a replay
    rewrites the file by atomic rename. A line a crash left half-written (its commit never
    returned) is skipped with a WARNING; the next append starts on a line of its own. Symbolic
    links are refused (OSError).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.is_symlink():
            raise ValueError(f"the pending-commit journal {self.path} is a symbolic link: refusing to follow it")
        if self.path.is_dir():
            raise ValueError(f"the pending-commit journal must be a file, got the directory {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        found = len(self)
        if found:
            logger.warning("%d commit(s) kept in %s from an earlier run: each router records its own ledger's",
                           found, self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                yield
        finally:
            os.close(fd)  # closing releases the lock

    def keep(self, entry: PendingCommit) -> None:
        line = entry.to_line()
        with self._locked():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a torn line before: this one must not be glued to it
                try:
                    _write_all(fd, line)
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)  # leave no half line of this commit behind
                    raise
            finally:
                os.close(fd)

    def __len__(self) -> int:
        return len(self._read()[0])

    def _read(self) -> tuple[list[PendingCommit], bool]:
        """The entries, and whether every line was one (False: the next rewrite drops the others)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return [], True
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        entries, clean = [], True
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip(b"\0 \r\t"):
                clean = clean and not line
                continue
            try:
                entries.append(PendingCommit.from_line(line))
            except (ValueError, KeyError, TypeError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                clean = False
                logger.warning("skipped line %d of the pending-commit journal %s, left unreadable by a crash "
                               "mid-write (%s): %.200r", number, self.path, type(e).__name__, line)
        return entries, clean

    def replay(self, commit: Callable[[PendingCommit], None], ledger: str) -> int:
        try:
            if not os.lstat(self.path).st_size:
                return 0
        except FileNotFoundError:
            return 0
        with self._locked():
            kept, clean = self._read()
            left = _replay(kept, commit, ledger)
            if left == kept and clean:
                return sum(entry.ledger == ledger for entry in left)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                _write_all(fd, b"".join(entry.to_line() for entry in left))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            return sum(entry.ledger == ledger for entry in left)


def record_anew(store: LedgerStore, entry: PendingCommit, ttl_s: float) -> bool:
    """Record a commit whose reservation `store` no longer knows, once; whether this call recorded it.

    The money goes on a hold of 0 USD made for it, `<reservation id>:recorded-anew` (kept `ttl_s`
    seconds if left open), in those of the entry's scopes that still have a budget, so repeating
    this — a retry after a lost reply, a replay after a crash — charges once while the ledger
    remembers that hold. Whether the money can have been counted already depends on when the
    commit was first tried, `entry.kept_at`, against `store.remembered_since()`:

    - later (by more than CLOCK_SLACK_S): had an earlier attempt reached the ledger, it would
      remember the reservation; it was never committed (its hold had ended and been forgotten,
      or the ledger lost its data). Recording it is exact; logged as a WARNING.
    - earlier: the commit is older than what the ledger remembers (a replay after a long outage or
      a restart). If a first attempt did reach the ledger and only its replies were lost, this
      counts it a second time; not recording it would lose it in every other case, far likelier
      (a kept commit is one the ledger refused on every try). It is recorded, once, with a
      WARNING that names the reservation and the amount, so that the books can be checked.

    UnknownScope (a KeyError) when none of the entry's scopes has a budget any more;
    LedgerUnavailable when the ledger cannot be reached (nothing was recorded, or the repeat is safe).
    """
    since = store.remembered_since()
    # Scopes forgotten meanwhile (idle sessions) are left out; the enclosing ones are charged.
    present = [s.scope for s in store.states(entry.scopes) if s is not None]
    if not present:
        raise no_budget(entry.scopes[-1])
    fresh = f"{entry.reservation_id}:recorded-anew"
    try:
        store.reserve(fresh, present, 0.0, ttl_s)
    except ValueError:  # made by an earlier try: committed already, or open with other scopes
        pass
    committed = store.commit(fresh, entry.cost_usd, model=entry.model)
    if not committed:
        return False
    first_try = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.kept_at))
    if entry.kept_at - CLOCK_SLACK_S >= since:
        logger.warning("the ledger no longer knew reservation %s (its hold had ended and been forgotten); recorded "
                       "%.9g USD for %s in scope %r under a new one, exactly: no attempt since %s had reached it",
                       entry.reservation_id, entry.cost_usd, entry.model, present[-1], first_try)
    else:
        remembered = "nothing" if math.isinf(since) else time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        logger.warning("the ledger no longer knew reservation %s, first tried at %s, before what it remembers "
                       "(finished reservations since %s); recorded %.9g USD for %s in scope %r under %s, once. If "
                       "that first commit reached the ledger and only its reply was lost, this counts it twice",
                       entry.reservation_id, first_try, remembered, entry.cost_usd, entry.model, present[-1], fresh)
    return True


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (os.write may write part of it); OSError when the disk takes no more."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"wrote nothing of the {len(view)} bytes left")
        view = view[written:]


def _gone(ledger: str) -> bool:
    """Whether `ledger` is a memory ledger of a process that no longer runs."""
    if not ledger.startswith("memory://"):
        return False
    pid = ledger.removeprefix("memory://").partition("/")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


def _replay(kept: list[PendingCommit], commit: Callable[[PendingCommit], None], ledger: str) -> list[PendingCommit]:
    """Commit the entries of `ledger` in order until it is unavailable; what is left to keep."""
    left = []
    for i, entry in enumerate(kept):
        if entry.ledger != ledger:
            if _gone(entry.ledger):
                logger.error("dropped %.9g USD for %s in scope %r: it was kept for a memory ledger whose process "
                             "(%s) has ended, taking its budgets with it", entry.cost_usd, entry.model,
                             entry.scopes[-1], entry.ledger)
            else:
                left.append(entry)
            continue
        try:
            commit(entry)
        except LedgerUnavailable:
            return left + kept[i:]
        except (KeyError, ValueError) as error:  # the ledger lost its scopes: nothing can take it
            logger.error("dropped %.9g USD for %s in scope %r, kept since %s while the ledger was unreachable: %s",
                         entry.cost_usd, entry.model, entry.scopes[-1],
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.kept_at)), error)
    return left
