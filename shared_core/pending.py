"""Commits the ledger could not take yet, kept until it can: in memory, or in a journal file.

A call that was made has been paid for, whatever the ledger says when its cost arrives. When
the ledger cannot be reached at that moment, the router keeps the commit here and offers it
again on later commits (`Router.retry_pending`). In memory, what is kept dies with the process;
a `PendingJournal` keeps it in a file, so a router started after a crash records it.

Replaying is safe: a commit names its reservation, and the ledger charges a reservation once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .budget import LedgerUnavailable

__all__ = ["PendingCommit", "PendingCommits", "PendingJournal"]

logger = logging.getLogger("omniroute")


@dataclass(frozen=True)
class PendingCommit:
    """One commit kept for later: the reservation, the scopes it held, the model and USD spent."""

    reservation_id: str
    scopes: tuple[str, ...]
    model: str
    cost_usd: float
    kept_at: float  # Unix time it was kept


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

    def replay(self, commit: Callable[[PendingCommit], None]) -> int:
        """Offer each kept commit to `commit`, oldest first; how many are still kept afterwards.

        A LedgerUnavailable stops the replay and keeps that commit and the rest; a commit that
        raises anything else cannot be recorded by any retry and is dropped with an ERROR log.
        """
        with self._lock:
            kept, self._kept = self._kept, []
        left = _replay(kept, commit)
        with self._lock:
            self._kept[:0] = left
            return len(self._kept)


class PendingJournal(PendingCommits):
    """Commits kept in a file (JSON lines, each fsynced) until the ledger takes them.

    Processes may share one journal: appends and replays hold an exclusive lock on
    `<path>.lock`, and a replay rewrites the file by atomic rename. A line a crash left
    half-written (its commit never returned) is skipped with a WARNING.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"the pending-commit journal must be a file, got the directory {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        found = len(self)
        if found:
            logger.warning("%d commit(s) kept in %s from an earlier run will be recorded on the next commit",
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
        line = json.dumps({**asdict(entry), "scopes": list(entry.scopes)}, allow_nan=False) + "\n"
        with self._locked():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def __len__(self) -> int:
        try:
            return len(self._read()) if self.path.stat().st_size else 0
        except FileNotFoundError:
            return 0

    def _read(self) -> list[PendingCommit]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                raw = json.loads(line)
                entries.append(PendingCommit(
                    reservation_id=str(raw["reservation_id"]), scopes=tuple(raw["scopes"]), model=str(raw["model"]),
                    cost_usd=float(raw["cost_usd"]), kept_at=float(raw["kept_at"]),
                ))
            except (ValueError, KeyError, TypeError) as e:
                logger.warning("skipped line %d of the pending-commit journal %s, left unreadable by a crash "
                               "mid-write (%s): %.200r", number, self.path, e, line)
        return entries

    def replay(self, commit: Callable[[PendingCommit], None]) -> int:
        try:
            if not self.path.stat().st_size:
                return 0
        except FileNotFoundError:
            return 0
        with self._locked():
            left = _replay(self._read(), commit)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(temporary, "w", encoding="utf-8") as f:
                for entry in left:
                    f.write(json.dumps({**asdict(entry), "scopes": list(entry.scopes)}, allow_nan=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
            return len(left)


def _replay(kept: list[PendingCommit], commit: Callable[[PendingCommit], None]) -> list[PendingCommit]:
    """Commit `kept` in order until the ledger is unavailable; what is left to keep."""
    for i, entry in enumerate(kept):
        try:
            commit(entry)
        except LedgerUnavailable:
            return kept[i:]
        except (KeyError, ValueError) as error:  # the ledger lost its scopes: nothing can take it
            logger.error("dropped %.9g USD for %s in scope %r, kept since %s while the ledger was unreachable: %s",
                         entry.cost_usd, entry.model, entry.scopes[-1],
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.kept_at)), error)
    return []
