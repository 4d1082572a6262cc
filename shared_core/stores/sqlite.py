"""A ledger in one SQLite file: durable, shared by the threads and processes of one host.

Every change runs in a `BEGIN IMMEDIATE` transaction, so writers queue on the database's write
lock and each check-and-charge is atomic across scopes; the file is in WAL mode, so readers
never wait for writers. WAL needs shared memory: keep the file on a local disk, not NFS.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..budget import (
    DEFAULT_MAX_FINISHED,
    DEFAULT_RETENTION_S,
    IDLE_BATCH,
    Budget,
    LedgerUnavailable,
    ScopeBooks,
    ScopeState,
    budget_from_json,
    budget_json,
    check_max_finished,
    check_retention,
)
from .base import Committed, LedgerStore, Pace, id_taken, no_budget, paced, scope_names, unknown_reservation
from .urls import StoreURL

__all__ = ["SQLiteStore"]

#: sqlite:// URLs may set `?synchronous=normal|full`.
URL_OPTIONS = frozenset({"synchronous"})

_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scopes (
    name TEXT PRIMARY KEY,
    budget TEXT NOT NULL,
    period_start REAL NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    lam REAL,
    idle_ttl_s REAL,
    idle_at REAL
);
CREATE INDEX IF NOT EXISTS scopes_idle ON scopes (idle_at) WHERE idle_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS spend (
    scope TEXT NOT NULL,
    model TEXT NOT NULL,
    nanos INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    PRIMARY KEY (scope, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    scopes TEXT NOT NULL,
    amount INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL,
    forget_at REAL,
    seq INTEGER
);
CREATE INDEX IF NOT EXISTS holds_open ON holds (expires_at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS holds_forget ON holds (forget_at) WHERE forget_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS holds_ended ON holds (seq) WHERE seq IS NOT NULL;
"""
# Version 1 → 2: scopes may be forgotten when idle (LedgerStore.set_budget's idle_ttl_s).
_MIGRATIONS = {1: ("ALTER TABLE scopes ADD COLUMN idle_ttl_s REAL", "ALTER TABLE scopes ADD COLUMN idle_at REAL")}
# Added to a version 2 file in place, without a new version: code that does not know them still reads
# and writes the file as before (its finished holds have no `seq` and are forgotten by time alone).
_ADDED_COLUMNS = {"holds": {"seq": "INTEGER"}}
#: Scope names bound in one `IN (...)` query: far below SQLite's limit on a statement's variables
#: (32,766 by default, 999 before 3.32), however many scopes a report asks for.
_NAMES_PER_QUERY = 500
_COLUMNS = "name, budget, period_start, committed, reserved, requests, released, expired, lam, idle_ttl_s"
_SCOPE_COLUMNS = ", ".join(f"scopes.{c}" for c in _COLUMNS.split(", "))
_WIDTH = len(_COLUMNS.split(", "))
_SYNCHRONOUS = ("normal", "full")
# Connections opened before a fork belong to the parent: the child must neither use nor close them.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteStore(LedgerStore):
    """A ledger in a SQLite file (WAL), safe for many threads and processes on one host.

    `synchronous="normal"` survives any process crash; "full" also survives power loss, at the
    price of an fsync per reservation. `retention_s` and `max_finished` bound how long and how
    many finished reservations are remembered (see LedgerStore): the holds table keeps at most
    `max_finished` rows beside the open ones. Each finished hold carries `seq`, its place in the
    order holds ended; the oldest are deleted first.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        retention_s: float = DEFAULT_RETENTION_S,
        max_finished: int = DEFAULT_MAX_FINISHED,
        synchronous: str = "normal",
        busy_timeout_s: float = 30.0,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        if str(path) in ("", ":memory:"):
            raise ValueError("a SQLite ledger needs a file path (':memory:' is not shared between connections)")
        self.path = Path(path)
        # Resolved once: a later chdir must not move the ledger, and the URL is read on every commit.
        self._file = self.path.resolve()
        self._clock = clock
        self._retention_s = check_retention(retention_s)
        self._max_finished = check_max_finished(max_finished)
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._pool_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._create_schema()

    # ----------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._file, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.DatabaseError as e:
            raise ValueError(f"cannot open the SQLite ledger {self.path}: {e}") from e
        return conn

    def _create_schema(self) -> None:
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")  # the version is read under the write lock: one migrates
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, *_MIGRATIONS, _SCHEMA_VERSION):
                conn.execute("ROLLBACK")
                raise ValueError(
                    f"{self.path} holds ledger schema version {version}; this code reads {_SCHEMA_VERSION}"
                )
            for step in range(version, _SCHEMA_VERSION) if version else ():
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            for table, added in _ADDED_COLUMNS.items():
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, kind in added.items() if present else ():  # no table yet: _SCHEMA makes it
                    if column not in present:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise LedgerUnavailable(f"cannot set up the SQLite ledger {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            raise ValueError(f"cannot open the SQLite ledger {self.path}: {e}") from e
        finally:
            conn.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._pid != os.getpid():
                _INHERITED.extend(self._all)
                self._pool, self._all, self._pid = [], [], os.getpid()
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self._connect()
            with self._pool_lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            with self._pool_lock:
                if conn in self._all:
                    self._pool.append(conn)

    @contextmanager
    def _transaction(self, write: bool = True, *, atomic: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic transaction: BEGIN IMMEDIATE takes the write lock up front, so no check goes stale.
        Not `atomic`: reads whose statements each stand alone (each is a snapshot by itself)."""
        with self._connection() as conn:
            try:
                if atomic:
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                if atomic:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise LedgerUnavailable(f"SQLite ledger {self.path} is unavailable: {e}") from e
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._pool_lock:
            if self._pid == os.getpid():
                for conn in self._all:
                    conn.close()
            self._pool, self._all = [], []

    # ----------------------------------------------------------------- books
    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Lapse reservations whose time is up (their money returns) and forget finished ones past
        their retention, and the oldest beyond max_finished."""
        # One indexed look first: nearly always nothing is due, and without it the six statements
        # below ran on every write (a third to a half of its statements).
        if db.execute(
            "SELECT 1 FROM holds WHERE status = 'open' AND expires_at <= ? UNION ALL "
            "SELECT 1 FROM holds WHERE forget_at <= ? UNION ALL SELECT 1 FROM scopes WHERE idle_at <= ? LIMIT 1",
            (now, now, now),
        ).fetchone() is None:
            return
        lapsed = db.execute(
            "SELECT id, scopes, amount FROM holds WHERE status = 'open' AND expires_at <= ?", (now,)
        ).fetchall()
        for _, scopes, amount in lapsed:
            db.executemany(
                "UPDATE scopes SET reserved = reserved - ?, expired = expired + 1 WHERE name = ?",
                [(amount, s) for s in json.loads(scopes)],
            )
        if lapsed:
            first = self._next_seq(db)
            db.executemany(
                "UPDATE holds SET status = 'lapsed', forget_at = ?, seq = ? WHERE id = ?",
                [(now + self._retention_s, first + i, rid) for i, (rid, _, _) in enumerate(lapsed)],
            )
            self._bound(db, first + len(lapsed) - 1)
        db.execute("DELETE FROM holds WHERE forget_at <= ?", (now,))
        due = db.execute(
            "SELECT name, reserved, idle_ttl_s FROM scopes WHERE idle_at <= ? LIMIT ?", (now, IDLE_BATCH)
        ).fetchall()
        # A scope still holding money is looked at again once its holds could have lapsed.
        db.executemany("UPDATE scopes SET idle_at = ? WHERE name = ?",
                       [(now + ttl, name) for name, reserved, ttl in due if reserved])
        idle = [(name,) for name, reserved, _ in due if not reserved]
        db.executemany("DELETE FROM scopes WHERE name = ?", idle)
        db.executemany("DELETE FROM spend WHERE scope = ?", idle)

    @staticmethod
    def _next_seq(db: sqlite3.Connection) -> int:
        """The place of the next hold to end in the order holds ended (one writer at a time: no gaps)."""
        return int(db.execute("SELECT coalesce(max(seq), 0) + 1 FROM holds WHERE seq IS NOT NULL").fetchone()[0])

    def _end(self, db: sqlite3.Connection, reservation_id: str, status: str, now: float) -> None:
        """Mark a hold ended now (or committed late): remembered retention_s from now, the newest in the order."""
        seq = self._next_seq(db)
        db.execute(
            "UPDATE holds SET status = ?, forget_at = ?, seq = ? WHERE id = ?",
            (status, now + self._retention_s, seq, reservation_id),
        )
        self._bound(db, seq)

    def _bound(self, db: sqlite3.Connection, newest: int) -> None:
        """Forget the holds that ended first beyond the max_finished up to place `newest` (IDLE_BATCH
        places at most per call, so that a lowered max_finished never stalls one request)."""
        if newest <= self._max_finished:
            return  # fewer have ever ended (since the ledger last forgot them all)
        db.execute(
            "DELETE FROM holds WHERE seq <= min(?, (SELECT min(seq) FROM holds WHERE seq IS NOT NULL) + ?)",
            (newest - self._max_finished, IDLE_BATCH - 1),
        )

    def _load(
        self, db: sqlite3.Connection, chain: Sequence[str], now: float, present: bool = False
    ) -> list[ScopeBooks]:
        """The books of every scope in `chain`, in order, rolled into the current period.

        UnknownScope for a scope without a budget, unless `present`: then it is skipped."""
        marks = ", ".join("?" * len(chain))
        rows = {r[0]: r for r in db.execute(f"SELECT {_COLUMNS} FROM scopes WHERE name IN ({marks})", tuple(chain))}
        books = []
        for s in chain:
            if s not in rows:
                if present:
                    continue
                raise no_budget(s)
            b = _books(rows[s])
            if b.roll(now):
                db.execute("DELETE FROM spend WHERE scope = ?", (s,))
            books.append(b)
        return books

    @staticmethod
    def _save(db: sqlite3.Connection, books: Sequence[ScopeBooks], now: float) -> None:
        """Write the books back; every write is activity, so a forgettable scope's idle time restarts."""
        db.executemany(
            "UPDATE scopes SET budget = ?, period_start = ?, committed = ?, reserved = ?, requests = ?, "
            "released = ?, expired = ?, lam = ?, idle_ttl_s = ?, idle_at = ? WHERE name = ?",
            [
                (budget_json(b.budget), b.period_start, b.committed, b.reserved, b.requests,
                 b.released, b.expired, b.lam, b.idle_ttl_s,
                 None if b.idle_ttl_s is None else now + b.idle_ttl_s, b.scope)
                for b in books
            ],
        )

    # ----------------------------------------------------------------- LedgerStore
    def _set_budget(
        self, scope: str, budget: Budget, reset: bool, only_if_absent: bool, idle_ttl_s: float | None
    ) -> bool:
        with self._transaction() as db:
            now = self._clock()
            self._sweep(db, now)
            inserted = db.execute(
                "INSERT INTO scopes (name, budget, period_start, idle_ttl_s, idle_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (scope, budget_json(budget), now, idle_ttl_s, None if idle_ttl_s is None else now + idle_ttl_s),
            ).rowcount
            if inserted:
                return True
            if only_if_absent:
                return False
            (books,) = self._load(db, [scope], now)
            if books.rebudget(budget, now, reset):
                db.execute("DELETE FROM spend WHERE scope = ?", (scope,))
            books.idle_ttl_s = idle_ttl_s
            self._save(db, [books], now)
            return True

    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        scopes = scope_names(scopes)
        now = self._clock()
        # A chain's books are one statement, a snapshot by itself: no transaction around it. (Whether
        # something is due may change right after the look, as it may right after any read.)
        with self._transaction(write=False, atomic=len(scopes) > _NAMES_PER_QUERY) as db:
            if not self._due(db, now):
                return self._read(db, scopes, now)
        with self._transaction() as db:  # something lapsed or idled out: sweep it first
            self._sweep(db, now)
            return self._read(db, scopes, now)

    @classmethod
    def _read(cls, db: sqlite3.Connection, scopes: Sequence[str], now: float) -> list[ScopeState | None]:
        """The books of `scopes` (None for one without a budget), rolled into the current period as a
        view: the next write stores the roll."""
        scopes = list(scopes)
        books = cls._read_books(db, scopes, now)
        return [books[s].snapshot() if s in books else None for s in scopes]

    @staticmethod
    def _read_books(
        db: sqlite3.Connection, scopes: Sequence[str], now: float, rolled: set[str] | None = None
    ) -> dict[str, ScopeBooks]:
        """The books of those of `scopes` that have a budget, with their spend by model, rolled into
        the current period in memory only (the names of those rolled are added to `rolled`)."""
        names = list(dict.fromkeys(scopes))
        books: dict[str, ScopeBooks] = {}
        for start in range(0, len(names), _NAMES_PER_QUERY):
            chunk = tuple(names[start:start + _NAMES_PER_QUERY])
            marks = ", ".join("?" * len(chunk))
            # One statement, so the spend by model always adds up to the committed it is read with.
            for row in db.execute(
                f"SELECT {_SCOPE_COLUMNS}, spend.model, spend.nanos, spend.calls FROM scopes "
                f"LEFT JOIN spend ON spend.scope = scopes.name WHERE scopes.name IN ({marks})", chunk
            ):
                b = books.get(row[0])
                if b is None:
                    b = books[row[0]] = _books(row[:_WIDTH])
                model = row[_WIDTH]
                if model is not None:
                    b.spend[model], b.calls[model] = row[_WIDTH + 1], row[_WIDTH + 2]
        for b in books.values():
            if b.roll(now) and rolled is not None:
                rolled.add(b.scope)
        return books

    @staticmethod
    def _due(db: sqlite3.Connection, now: float) -> bool:
        """Whether a hold has lapsed or an idle scope is to be forgotten by `now` (a read checks first)."""
        return db.execute(
            "SELECT 1 FROM holds WHERE status = 'open' AND expires_at <= ? "
            "UNION ALL SELECT 1 FROM scopes WHERE idle_at <= ? LIMIT 1", (now, now)
        ).fetchone() is not None

    def scopes(self) -> list[str]:
        now = self._clock()
        with self._transaction(write=False) as db:
            due = self._due(db, now)
        with self._transaction(write=due) as db:
            if due:
                self._sweep(db, now)
            return [r[0] for r in db.execute("SELECT name FROM scopes ORDER BY name")]

    def _reserve(self, reservation_id: str, chain: tuple[str, ...], nanos: int, ttl_s: float) -> None:
        encoded = json.dumps(chain)
        with self._transaction() as db:
            now = self._clock()
            self._sweep(db, now)
            # The hold is written first (a refusal below rolls it back): a new id, the usual case,
            # then needs no look of its own.
            if not db.execute(
                "INSERT INTO holds (id, scopes, amount, expires_at, status) VALUES (?, ?, ?, ?, 'open') "
                "ON CONFLICT (id) DO NOTHING",
                (reservation_id, encoded, nanos, now + ttl_s),
            ).rowcount:
                row = db.execute("SELECT scopes, amount, status FROM holds WHERE id = ?", (reservation_id,)).fetchone()
                if tuple(row) == (encoded, nanos, "open"):
                    return
                raise id_taken(reservation_id)
            books = self._load(db, chain, now)
            for b in books:
                b.check(nanos)
            for b in books:
                b.reserved += nanos
            self._save(db, books, now)

    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:
        with self._transaction() as db:
            now = self._clock()
            self._sweep(db, now)
            return self._charge(db, reservation_id, nanos, model, now)

    def _commit_books(
        self, reservation_id: str, nanos: int, model: str | None, scopes: tuple[str, ...], pace: Pace | None
    ) -> Committed:
        with self._transaction() as db:
            now = self._clock()
            self._sweep(db, now)
            # The books are read once: what the commit changes is changed in this copy too, so the
            # books after it are the copy (nothing else writes inside this transaction).
            rolled: set[str] = set()
            read = self._read_books(db, scopes, now, rolled)
            before = [read[s].snapshot() for s in scopes if s in read]
            thetas = paced(before, pace)  # before anything changes: a pace that fails rolls nothing back
            charged = self._charge(db, reservation_id, nanos, model, now, (read, rolled))
            if charged:
                for b, theta in zip(before, thetas, strict=True):
                    if theta is not None:
                        db.execute("UPDATE scopes SET lam = ? WHERE name = ?", (theta, b.scope))
                        read[b.scope].lam = theta
            return Committed(charged, before, [read[s].snapshot() for s in scopes if s in read])

    def _charge(
        self, db: sqlite3.Connection, reservation_id: str, nanos: int, model: str | None, now: float,
        read: tuple[dict[str, ScopeBooks], set[str]] | None = None,
    ) -> bool:
        """commit, inside a swept write transaction. `read` — books `_read_books` gave in this
        transaction, and the scopes it rolled — is kept what the ledger holds after the commit."""
        row = db.execute("SELECT scopes, amount, status FROM holds WHERE id = ?", (reservation_id,)).fetchone()
        if row is None:
            raise unknown_reservation(reservation_id)
        scopes, amount, status = row
        if status == "committed":
            return False
        held = json.loads(scopes)
        copy, rolled = read if read is not None else ({}, set())
        covered = all(s in copy for s in held)
        if covered:  # the books read already: only a roll they made in memory is still to store
            books = [copy[s] for s in held]
            for s in rolled.intersection(held):
                db.execute("DELETE FROM spend WHERE scope = ?", (s,))
        else:
            books = self._load(db, held, now, present=True)
        for b in books:
            if status == "open":
                b.reserved -= amount
            b.charge(nanos, model)
        self._save(db, books, now)
        if model is not None:
            db.executemany(
                "INSERT INTO spend (scope, model, nanos, calls) VALUES (?, ?, ?, 1) ON CONFLICT (scope, model) "
                "DO UPDATE SET nanos = nanos + excluded.nanos, calls = calls + 1",
                [(b.scope, model, nanos) for b in books],
            )
        self._end(db, reservation_id, "committed", now)
        if read is not None and not covered:  # a hold on scopes besides those read: read them again
            copy.update(self._read_books(db, list(copy), now))
        return True

    def _release(self, reservation_id: str) -> bool:
        with self._transaction() as db:
            now = self._clock()
            self._sweep(db, now)
            row = db.execute(
                "SELECT scopes, amount FROM holds WHERE id = ? AND status = 'open'", (reservation_id,)
            ).fetchone()
            if row is None:
                return False
            books = self._load(db, json.loads(row[0]), now, present=True)
            for b in books:
                b.reserved -= row[1]
                b.released += 1
            self._save(db, books, now)
            self._end(db, reservation_id, "released", now)
            return True

    def _adjust_lambda(self, scope: str, value: float) -> None:
        with self._transaction() as db:
            if not db.execute("UPDATE scopes SET lam = ? WHERE name = ?", (value, scope)).rowcount:
                raise no_budget(scope)

    def open_reservations(self) -> int:
        with self._transaction(write=False) as db:
            return db.execute(
                "SELECT COUNT(*) FROM holds WHERE status = 'open' AND expires_at > ?", (self._clock(),)
            ).fetchone()[0]

    def remembered_since(self) -> float:
        now = self._clock()
        with self._transaction(write=False) as db:
            row = db.execute(
                "SELECT forget_at FROM holds WHERE seq = (SELECT min(seq) FROM holds WHERE seq IS NOT NULL)"
            ).fetchone()
        # What ended retention_s ago is gone at the next write even where no sweep has run yet.
        return max(now, row[0] if row else now) - self._retention_s

    @property
    def url(self) -> str:
        return f"sqlite:///{self._file}"

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


def _books(row: Sequence) -> ScopeBooks:
    name, budget, period_start, committed, reserved, requests, released, expired, lam, idle_ttl_s = row
    return ScopeBooks(
        scope=name, budget=budget_from_json(budget), period_start=period_start, committed=committed,
        reserved=reserved, requests=requests, released=released, expired=expired, lam=lam, idle_ttl_s=idle_ttl_s,
    )


def open_url(url: StoreURL, must_exist: bool, **options: Any) -> SQLiteStore:
    """The ledger in the file sqlite:///relative/path.db or sqlite:////absolute/path.db names."""
    if url.netloc:
        raise url.malformed(f"a SQLite ledger is a local file, but {url.netloc!r} names a host")
    file = url.path.removeprefix("/")
    if not file:
        raise url.malformed("no file path")
    if must_exist and not Path(file).exists():
        raise FileNotFoundError(errno.ENOENT, "no SQLite ledger file", file)
    return SQLiteStore(file, **url.options, **options)
