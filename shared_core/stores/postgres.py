"""A ledger in PostgreSQL: one budget shared by every process on every host that reaches the database.

Each operation is one call of a PL/pgSQL function: one round trip and one transaction (the
connections run in autocommit, so a function call commits on its own), in which the check of
every enclosing scope and the charge to all of them happen together. Money is held as whole
nano-dollars in BIGINT columns, as in the other stores. Time comes from the database's clock
(`clock_timestamp()`), so hosts with drifting clocks agree on when a reservation expires.

Concurrency uses row locks at READ COMMITTED, not SERIALIZABLE: the budget of a busy tenant is
one hot row that every request updates, where SERIALIZABLE would abort and retry most of them,
while a row lock queues them and lets unrelated tenants run in parallel. Deadlocks are ruled out
by the order locks are taken in: (1) the hold row a commit or release changes, holding nothing else;
(2) the holds that lapse or are forgotten, with SKIP LOCKED, so never waiting; (3) every scope
row the call will write, in one `SELECT ... ORDER BY name FOR UPDATE`, so in one global order.
The holds forgotten beyond max_finished after a commit or release are taken with SKIP LOCKED
too, so that late step never waits either.
set_budget first takes an advisory lock on the scope's name, so two creators of one scope queue
there, holding nothing, rather than on a row that one of them would lock out of that order.

Everything lives in one schema (`?schema=`, default "omniroute"), created with its tables and
functions on first use; a schema is one ledger, as a key prefix is in Redis.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

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
    to_nanos,
)
from .base import (
    DEFAULT_UNREACHABLE_COOLDOWN_S,
    Committed,
    LedgerStore,
    Outage,
    Pace,
    move_lambdas,
    no_budget,
    refusal,
    refuse,
    scope_names,
    unknown_reservation,
)
from .urls import StoreURL

__all__ = ["PostgresStore", "DEFAULT_SCHEMA"]

#: The schema holding the ledger's tables, unless the URL gives `?schema=`.
DEFAULT_SCHEMA = "omniroute"
#: postgresql:// URLs may name the schema and set the outage cool-down (seconds; see base.Outage);
#: libpq's own parameters go in the URL's user, host, path.
URL_OPTIONS = frozenset({"schema", "unreachable_cooldown_s"})

logger = logging.getLogger("omniroute")

_SCHEMA_VERSION = 1
# Advisory lock class (the first of pg_advisory_xact_lock's two keys) of everything this module locks.
_LOCK_CLASS = 0x4F52_4C47
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout, a whole number of seconds
_WAIT_S = 5.0  # for a pooled connection, before the call fails with LedgerUnavailable
# A statement or a lock wait longer than this is cancelled by the server; a server that stops
# answering altogether (frozen, or a path that swallows packets) is cut off by the client after
# _SEVER_S: the call then fails with LedgerUnavailable, and the Router keeps the money to retry.
_STATEMENT_TIMEOUT_MS = 5_000
_SEVER_S = 10.0
# TCP keepalives and a send timeout notice a peer that vanished without closing the connection.
_TCP = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
        "tcp_user_timeout": _STATEMENT_TIMEOUT_MS}
# Pools a forked child inherited: they belong to the parent, so the child never uses or closes them.
_INHERITED: list[ConnectionPool] = []

# {s} is the quoted schema; {batch} is IDLE_BATCH. `t` is the time of the call, `retain` retention_s,
# `keep` max_finished.
_DDL = """
CREATE TABLE IF NOT EXISTS {s}.ledger_schema (version integer NOT NULL);
-- Every request rewrites its scopes' rows: room left on each page lets PostgreSQL do it in place.
CREATE TABLE IF NOT EXISTS {s}.scopes (
    name text COLLATE "C" PRIMARY KEY,
    budget text NOT NULL,
    usd bigint NOT NULL,
    period_s double precision,
    period_start double precision NOT NULL,
    committed bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0,
    requests bigint NOT NULL DEFAULT 0,
    released bigint NOT NULL DEFAULT 0,
    expired bigint NOT NULL DEFAULT 0,
    lam double precision,
    idle_ttl_s double precision,
    idle_at double precision
) WITH (fillfactor = 50);
CREATE INDEX IF NOT EXISTS scopes_idle ON {s}.scopes (idle_at) WHERE idle_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.spend (
    scope text COLLATE "C" NOT NULL,
    model text NOT NULL,
    nanos bigint NOT NULL,
    calls bigint NOT NULL,
    PRIMARY KEY (scope, model)
);
CREATE TABLE IF NOT EXISTS {s}.holds (
    id text COLLATE "C" PRIMARY KEY,
    chain text[] NOT NULL,
    amount bigint NOT NULL,
    expires_at double precision NOT NULL,
    status text NOT NULL,
    forget_at double precision,
    seq bigint
);
-- A finished hold's `seq` is its place in the order holds ended (from holds_ended_seq): the oldest
-- beyond `keep` are forgotten. A ledger made before it had `seq` gets it here, in place.
ALTER TABLE {s}.holds ADD COLUMN IF NOT EXISTS seq bigint;
CREATE SEQUENCE IF NOT EXISTS {s}.holds_ended_seq;
CREATE INDEX IF NOT EXISTS holds_open ON {s}.holds (expires_at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS holds_forget ON {s}.holds (forget_at) WHERE forget_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS holds_ended ON {s}.holds (seq) WHERE seq IS NOT NULL;

-- Forget the holds that ended first beyond the newest `keep` ({batch} at most per call, so that a
-- lowered max_finished never stalls one request; rows another call has locked are left to later ones).
CREATE OR REPLACE FUNCTION {s}.ledger_bound(keep bigint) RETURNS void LANGUAGE sql AS $$
  DELETE FROM {s}.holds WHERE id IN (
    SELECT id FROM {s}.holds WHERE seq <= (SELECT last_value FROM {s}.holds_ended_seq) - keep
    ORDER BY seq LIMIT {batch} FOR UPDATE SKIP LOCKED);
$$;

-- The start of every call: forget holds finished more than `retain` ago, lapse those whose time
-- is up (their money returns) and forget idle scopes, a batch of each at most; lock the rows of
-- `p_chain` and of every scope these touch, in name order (see the module's docstring); then start
-- a new period for each scope of `p_chain` whose period is over (its spend and counts reset).
CREATE OR REPLACE FUNCTION {s}.ledger_begin(t double precision, retain double precision, keep bigint, p_chain text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  lapsed text[];
  lapsed_nanos bigint[];
  lapsed_count bigint[];
  idle text[];
  rolling boolean;
BEGIN
  IF EXISTS (SELECT FROM {s}.holds WHERE forget_at <= t)
     OR EXISTS (SELECT FROM {s}.holds WHERE status = 'open' AND expires_at <= t)
     OR EXISTS (SELECT FROM {s}.scopes WHERE idle_at <= t) THEN
    DELETE FROM {s}.holds WHERE id IN (
      SELECT id FROM {s}.holds WHERE forget_at <= t LIMIT {batch} FOR UPDATE SKIP LOCKED);
    WITH done AS (
      UPDATE {s}.holds SET status = 'lapsed', forget_at = t + retain, seq = nextval('{s}.holds_ended_seq')
      WHERE id IN (
        SELECT id FROM {s}.holds WHERE status = 'open' AND expires_at <= t LIMIT {batch} FOR UPDATE SKIP LOCKED)
      RETURNING chain AS names, amount)
    SELECT array_agg(name), array_agg(nanos), array_agg(n) INTO lapsed, lapsed_nanos, lapsed_count
    FROM (SELECT name, sum(amount)::bigint AS nanos, count(*) AS n FROM done, unnest(names) AS name GROUP BY name) AS l;
    IF lapsed IS NOT NULL THEN PERFORM {s}.ledger_bound(keep); END IF;
    SELECT array_agg(name) INTO idle FROM (
      SELECT name FROM {s}.scopes WHERE idle_at <= t ORDER BY idle_at LIMIT {batch}) AS due;
  END IF;
  SELECT coalesce(bool_or(name = ANY (p_chain) AND t - period_start >= period_s), false) INTO rolling
  FROM (SELECT name, period_start, period_s FROM {s}.scopes WHERE name = ANY (p_chain || lapsed || idle)
        ORDER BY name FOR UPDATE) AS locked;
  IF lapsed IS NOT NULL THEN
    UPDATE {s}.scopes AS sc SET reserved = sc.reserved - l.nanos, expired = sc.expired + l.n
    FROM unnest(lapsed, lapsed_nanos, lapsed_count) AS l (name, nanos, n) WHERE sc.name = l.name;
  END IF;
  IF idle IS NOT NULL THEN
    -- A scope still holding money is looked at again once its holds could have lapsed.
    UPDATE {s}.scopes SET idle_at = t + idle_ttl_s WHERE name = ANY (idle) AND idle_at <= t AND reserved <> 0;
    WITH gone AS (DELETE FROM {s}.scopes WHERE name = ANY (idle) AND idle_at <= t RETURNING name)
    DELETE FROM {s}.spend WHERE scope IN (SELECT name FROM gone);
  END IF;
  IF rolling THEN
    WITH rolled AS (
      UPDATE {s}.scopes SET period_start = period_start + period_s * floor((t - period_start) / period_s),
                            committed = 0, requests = 0, released = 0, expired = 0
      WHERE name = ANY (p_chain) AND t - period_start >= period_s
      RETURNING name)
    DELETE FROM {s}.spend WHERE scope IN (SELECT name FROM rolled);
  END IF;
END $$;

-- The rule of LedgerStore.set_budget: true when set, false when only_if_absent found a budget.
CREATE OR REPLACE FUNCTION {s}.ledger_set_budget(
  t double precision, retain double precision, keep bigint, p_scope text, p_budget text, p_usd bigint,
  p_period_s double precision, p_reset boolean, p_only_if_absent boolean, p_idle_ttl_s double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  t := coalesce(t, extract(epoch FROM clock_timestamp()));
  PERFORM pg_advisory_xact_lock({lock_class}, hashtext(p_scope));
  PERFORM {s}.ledger_begin(t, retain, keep, ARRAY[p_scope]);
  INSERT INTO {s}.scopes (name, budget, usd, period_s, period_start, idle_ttl_s, idle_at)
  VALUES (p_scope, p_budget, p_usd, p_period_s, t, p_idle_ttl_s, t + p_idle_ttl_s)
  ON CONFLICT (name) DO NOTHING;
  IF FOUND THEN RETURN true; END IF;
  IF p_only_if_absent THEN RETURN false; END IF;
  IF p_reset THEN
    UPDATE {s}.scopes SET committed = 0, requests = 0, released = 0, expired = 0, period_start = t
    WHERE name = p_scope;
    DELETE FROM {s}.spend WHERE scope = p_scope;
  END IF;
  -- A changed period (none, some or another length) starts now and keeps the spend it has.
  UPDATE {s}.scopes SET budget = p_budget, usd = p_usd, period_s = p_period_s, idle_ttl_s = p_idle_ttl_s,
         idle_at = t + p_idle_ttl_s,
         period_start = CASE WHEN period_s IS DISTINCT FROM p_period_s THEN t ELSE period_start END
  WHERE name = p_scope;
  RETURN true;
END $$;

-- Each named scope that has a budget, with its spend per model and the time of the read.
CREATE OR REPLACE FUNCTION {s}.ledger_states(t double precision, retain double precision, keep bigint, p_names text[])
RETURNS TABLE (now double precision, name text, budget text, period_start double precision, committed bigint,
               reserved bigint, requests bigint, released bigint, expired bigint, lam double precision,
               idle_ttl_s double precision, models text[], nanos bigint[], calls bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  t := coalesce(t, extract(epoch FROM clock_timestamp()));
  PERFORM {s}.ledger_begin(t, retain, keep, '{}');
  RETURN QUERY
  SELECT t, sc.name, sc.budget, sc.period_start, sc.committed, sc.reserved, sc.requests, sc.released,
         sc.expired, sc.lam, sc.idle_ttl_s, sp.models, sp.nanos, sp.calls
  FROM {s}.scopes AS sc
  LEFT JOIN LATERAL (SELECT array_agg(model) AS models, array_agg(nanos) AS nanos, array_agg(calls) AS calls
                     FROM {s}.spend WHERE scope = sc.name) AS sp ON true
  WHERE sc.name = ANY (p_names);
END $$;

CREATE OR REPLACE FUNCTION {s}.ledger_scopes(t double precision, retain double precision, keep bigint)
RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
  t := coalesce(t, extract(epoch FROM clock_timestamp()));
  PERFORM {s}.ledger_begin(t, retain, keep, '{}');
  RETURN QUERY SELECT name FROM {s}.scopes;
END $$;

-- {ok} | {used} | {unknown, scope} | {exceeded, scope, nano-dollars left there}
CREATE OR REPLACE FUNCTION {s}.ledger_reserve(
  t double precision, retain double precision, keep bigint, p_id text, p_chain text[], p_amount bigint,
  p_ttl_s double precision)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
  held record;
  refusal record;
BEGIN
  t := coalesce(t, extract(epoch FROM clock_timestamp()));
  PERFORM {s}.ledger_begin(t, retain, keep, p_chain);
  -- Read after the chain's locks, so a retry racing its original sees it (a reserve never changes a hold).
  SELECT status, chain, amount INTO held FROM {s}.holds WHERE id = p_id;
  IF FOUND THEN
    IF held.status = 'open' AND held.chain = p_chain AND held.amount = p_amount THEN RETURN ARRAY['ok']; END IF;
    RETURN ARRAY['used'];
  END IF;
  -- The first scope without a budget, else the first without room; a hold of 0 always fits, even
  -- where spend is past the budget (left < 0).
  SELECT c.name, sc.name IS NULL AS unknown, sc.usd - sc.committed - sc.reserved AS left_nanos INTO refusal
  FROM unnest(p_chain) WITH ORDINALITY AS c (name, i) LEFT JOIN {s}.scopes AS sc ON sc.name = c.name
  WHERE sc.name IS NULL OR (p_amount > 0 AND p_amount > sc.usd - sc.committed - sc.reserved)
  ORDER BY sc.name IS NULL DESC, c.i LIMIT 1;
  IF FOUND AND refusal.unknown THEN RETURN ARRAY['unknown', refusal.name]; END IF;
  IF FOUND THEN RETURN ARRAY['exceeded', refusal.name, refusal.left_nanos::text]; END IF;
  WITH made AS (
    INSERT INTO {s}.holds (id, chain, amount, expires_at, status) VALUES (p_id, p_chain, p_amount, t + p_ttl_s, 'open')
    ON CONFLICT (id) DO NOTHING RETURNING id)
  UPDATE {s}.scopes SET reserved = reserved + p_amount, idle_at = t + idle_ttl_s
  WHERE name = ANY (p_chain) AND EXISTS (SELECT FROM made);
  IF NOT FOUND THEN RETURN ARRAY['used']; END IF;  -- made an instant ago for other scopes
  RETURN ARRAY['ok'];
END $$;

-- 'ok' | 'repeat' (committed before) | 'unknown'
CREATE OR REPLACE FUNCTION {s}.ledger_commit(
  t double precision, retain double precision, keep bigint, p_id text, p_actual bigint, p_model text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  held record;
BEGIN
  t := coalesce(t, extract(epoch FROM clock_timestamp()));
  SELECT chain INTO held FROM {s}.holds WHERE id = p_id FOR UPDATE;
  IF NOT FOUND THEN RETURN 'unknown'; END IF;
  PERFORM {s}.ledger_begin(t, retain, keep, held.chain);
  SELECT status, chain, amount INTO held FROM {s}.holds WHERE id = p_id;
  IF NOT FOUND THEN RETURN 'unknown'; END IF;  -- forgotten by the sweep just now
  IF held.status = 'committed' THEN RETURN 'repeat'; END IF;
  WITH charged AS (
    UPDATE {s}.scopes SET reserved = reserved - CASE WHEN held.status = 'open' THEN held.amount ELSE 0 END,
           committed = committed + p_actual, requests = requests + 1, idle_at = t + idle_ttl_s
    WHERE name = ANY (held.chain)
    RETURNING name),
  by_model AS (
    INSERT INTO {s}.spend AS sp (scope, model, nanos, calls)
    SELECT name, p_model, p_actual, 1 FROM charged WHERE p_model IS NOT NULL
    ON CONFLICT (scope, model) DO UPDATE SET nanos = sp.nanos + excluded.nanos, calls = sp.calls + 1)
  -- A late commit is remembered `retain` from now, as the newest.
  UPDATE {s}.holds SET status = 'committed', forget_at = t + retain, seq = nextval('{s}.holds_ended_seq')
  WHERE id = p_id;
  PERFORM {s}.ledger_bound(keep);
  RETURN 'ok';
END $$;

CREATE OR REPLACE FUNCTION {s}.ledger_release(t double precision, retain double precision, keep bigint, p_id text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  held record;
BEGIN
  t := coalesce(t, extract(epoch FROM clock_timestamp()));
  SELECT chain INTO held FROM {s}.holds WHERE id = p_id AND status = 'open' FOR UPDATE;
  IF NOT FOUND THEN RETURN false; END IF;
  PERFORM {s}.ledger_begin(t, retain, keep, held.chain);
  SELECT chain, amount INTO held FROM {s}.holds WHERE id = p_id AND status = 'open';
  IF NOT FOUND THEN RETURN false; END IF;  -- lapsed by the sweep just now
  WITH freed AS (
    UPDATE {s}.scopes SET reserved = reserved - held.amount, released = released + 1, idle_at = t + idle_ttl_s
    WHERE name = ANY (held.chain))
  UPDATE {s}.holds SET status = 'released', forget_at = t + retain, seq = nextval('{s}.holds_ended_seq')
  WHERE id = p_id;
  PERFORM {s}.ledger_bound(keep);
  RETURN true;
END $$;
"""

# The ledger's functions take the time of the call (NULL: the database's clock), retention_s and
# max_finished first.
_FUNCTIONS = {
    "set_budget": "SELECT {s}.ledger_set_budget(%s::float8, %s::float8, %s::int8, %s::text, %s::text, %s::int8, "
                  "%s::float8, %s::bool, %s::bool, %s::float8)",
    "states": "SELECT * FROM {s}.ledger_states(%s::float8, %s::float8, %s::int8, %s::text[])",
    "scopes": "SELECT * FROM {s}.ledger_scopes(%s::float8, %s::float8, %s::int8)",
    "reserve": "SELECT {s}.ledger_reserve(%s::float8, %s::float8, %s::int8, %s::text, %s::text[], %s::int8, "
               "%s::float8)",
    "commit": "SELECT {s}.ledger_commit(%s::float8, %s::float8, %s::int8, %s::text, %s::int8, %s::text)",
    "release": "SELECT {s}.ledger_release(%s::float8, %s::float8, %s::int8, %s::text)",
}
# Neither sweeps, as in the other stores: λ is no activity, and lapsed holds are not counted as open.
_QUERIES = {
    "lambda": "UPDATE {s}.scopes SET lam = %s::float8 WHERE name = %s::text RETURNING 1",
    "open": "SELECT count(*) FROM {s}.holds WHERE status = 'open' "
            "AND expires_at > coalesce(%s::float8, extract(epoch FROM clock_timestamp()))",
    # LedgerStore.remembered_since: what ended `retain` ago goes at the next call even before a sweep.
    "since": "SELECT greatest(coalesce(%s::float8, extract(epoch FROM clock_timestamp())), "
             "(SELECT forget_at FROM {s}.holds WHERE seq IS NOT NULL ORDER BY seq LIMIT 1)) - %s::float8",
}


class PostgresStore(LedgerStore):
    """A ledger in a PostgreSQL schema; many processes and hosts share one budget.

    `conninfo` is a libpq URL or key=value string (credentials may come from libpq's PG*
    variables or ~/.pgpass). `clock=None` (the default) uses the database's clock; give a clock
    only to test with fake time. At most `max_connections` connections are pooled per process.
    `retention_s` and `max_finished` bound how long and how many finished reservations are
    remembered (see LedgerStore): the holds table keeps about `max_finished` rows beside the open
    ones (more by at most the calls running at that moment; a lowered bound takes a few calls).
    LedgerUnavailable when the database cannot be reached (then, for `unreachable_cooldown_s`,
    at once: see `base.Outage`); ValueError when the schema cannot be set up or holds another
    version of the ledger.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        clock: Callable[[], float] | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
        max_finished: int = DEFAULT_MAX_FINISHED,
        max_connections: int = 8,
        create: bool = True,
        unreachable_cooldown_s: float = DEFAULT_UNREACHABLE_COOLDOWN_S,
    ) -> None:
        # PostgreSQL cuts longer names to 63 bytes (two ledgers could share one schema); other characters
        # would need escaping inside the functions' bodies and the queries' placeholders.
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"the PostgreSQL schema must be 1 to 63 letters, digits or '_', "
                             f"not starting with a digit, got {schema!r}")
        self.schema = schema
        self._conninfo = conninfo
        self._clock = clock
        self._retention_s = check_retention(retention_s)
        self._max_finished = check_max_finished(max_finished)
        self._max_connections = max_connections
        try:
            given = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as e:
            raise ValueError(f"malformed PostgreSQL connection string: {e}") from e
        # libpq's host and dbname are strings; psycopg types every value of the dict str | int | None.
        self.where = _location(given.get("host"), given.get("port"), given.get("dbname"))  # type: ignore[arg-type]
        try:
            with psycopg.connect(conninfo, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
                self.where = _location(conn.info.host, conn.info.port, conn.info.dbname)
                quoted = sql.Identifier(schema).as_string(conn)
                self._create_schema(conn, quoted, create)
        except psycopg.OperationalError as e:
            raise LedgerUnavailable(f"PostgreSQL ledger at {self.where} is unreachable: {e}") from e
        except psycopg.Error as e:
            raise ValueError(f"cannot set up the PostgreSQL ledger at {self.url}: {e}") from e
        self._sql = {name: text.replace("{s}", quoted) for name, text in {**_FUNCTIONS, **_QUERIES}.items()}
        self._outage = Outage(self.where, unreachable_cooldown_s)
        self._pool_lock = threading.Lock()
        self._pool = self._open_pool()
        self._pid = os.getpid()

    def _create_schema(self, conn: psycopg.Connection, quoted: str, create: bool) -> None:
        """Create the schema, its tables and functions unless they are there (one creator at a time);
        without `create`, a schema holding no ledger is a FileNotFoundError (a mistyped name must not
        become a new, empty ledger)."""
        table = f"{quoted}.ledger_schema"
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, self.schema))
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,):
                (version,) = conn.execute(f"SELECT max(version) FROM {table}").fetchone() or (None,)
                if version != _SCHEMA_VERSION:
                    raise ValueError(f"the PostgreSQL ledger at {self.url} holds ledger schema version {version}; "
                                     f"this code reads {_SCHEMA_VERSION}")
                # A ledger made before finished holds were bounded gets `seq`, its sequence, its index and
                # the functions that take max_finished, in place (its version stays: the old functions
                # remain for code that still calls them, and their holds are forgotten by time alone).
                if conn.execute("SELECT to_regclass(%s)", (f"{quoted}.holds_ended_seq",)).fetchone() == (None,):
                    self._run_ddl(conn, quoted)
                return
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no OmniRoute ledger in this PostgreSQL schema",
                                        f"{self.where}, schema {self.schema}")
            # Only a missing schema is created: one made beforehand needs no right to create schemas.
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                conn.execute(f"CREATE SCHEMA {quoted}")
            self._run_ddl(conn, quoted)
            conn.execute(f"INSERT INTO {table} (version) VALUES ({_SCHEMA_VERSION})")

    @staticmethod
    def _run_ddl(conn: psycopg.Connection, quoted: str) -> None:
        """Create what the ledger needs in the schema `quoted` (every statement may run again)."""
        ddl = _DDL.replace("{s}", quoted).replace("{batch}", str(IDLE_BATCH))
        conn.execute(ddl.replace("{lock_class}", str(_LOCK_CLASS)))

    def _open_pool(self) -> ConnectionPool:
        return ConnectionPool(
            self._conninfo, min_size=1, max_size=self._max_connections, timeout=_WAIT_S, open=True,
            name=f"omniroute-ledger-{self.schema}", configure=_configure,
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_S, **_TCP},
        )

    def _connections(self) -> ConnectionPool:
        """This process's pool: a forked child opens its own and leaves its parent's alone."""
        if self._pid != os.getpid():
            with self._pool_lock:
                if self._pid != os.getpid():
                    _INHERITED.append(self._pool)
                    self._pool, self._pid = self._open_pool(), os.getpid()
        return self._pool

    def _ledger(self, name: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of one call of the ledger's function `name` (one round trip, one transaction)."""
        return self._run(name, self._params(*args))

    def _params(self, *args: Any) -> tuple[Any, ...]:
        """A ledger function's parameters: the time, the retention bounds, then its own `args`."""
        return (self._now(), self._retention_s, self._max_finished, *args)

    def _now(self) -> float | None:
        """The injected clock's time, or None for the database's clock."""
        return None if self._clock is None else float(self._clock())

    def _run(self, name: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of statement `name`, run on a pooled connection (see `_run_all`)."""
        return self._run_all([(name, params)])[0]

    def _run_all(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
        """The rows of each statement (name, parameters), run in order on one pooled connection, each
        its own transaction; several go in one round trip (psycopg's pipeline mode).

        A connection found broken (the server restarted since it was pooled) is dropped and the
        statements run once more: every one is safe to run twice (a repeated reserve holds once, a
        repeated commit charges once). LedgerUnavailable when that fails too, or no connection comes
        (FailingFast, untried, while an outage found moments before lasts)."""
        with self._outage.attempt(self._contention):
            return self._run_pooled(statements)

    def _contention(self, error: LedgerUnavailable) -> bool:
        """Whether `error` met busy rows or connections rather than an unreachable server: a statement
        or lock that timed out, or no connection free while the pool holds some (all in use)."""
        cause = error.__cause__
        if isinstance(cause, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)):
            return True
        return isinstance(cause, PoolTimeout) and self._connections().get_stats().get("pool_size", 0) > 0

    def _run_pooled(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
        pool = self._connections()
        retried = False
        try:
            while True:
                with pool.connection() as conn:
                    watchdog = threading.Timer(_SEVER_S, _sever, (conn,))
                    watchdog.daemon = True
                    watchdog.start()
                    try:
                        if len(statements) == 1:
                            ((name, params),) = statements
                            return [conn.execute(self._sql[name], params).fetchall()]
                        with conn.pipeline():
                            cursors = [conn.execute(self._sql[name], params) for name, params in statements]
                        return [cursor.fetchall() for cursor in cursors]
                    except psycopg.OperationalError as e:
                        if retried or not conn.broken:
                            raise
                        logger.warning("PostgreSQL ledger at %s: a pooled connection was broken (%s); "
                                       "trying another", self.where, e)
                    finally:
                        watchdog.cancel()
                pool.check()  # after a restart every idle connection is broken: drop them all at once
                retried = True
        except psycopg.DataError as e:  # e.g. a NUL character, which PostgreSQL text cannot hold
            raise ValueError(f"PostgreSQL ledger at {self.where} refused a value: {e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            # Not only a lost connection: a server turned read-only by a failover, out of disk or
            # shutting down. Whatever it is, nothing was recorded, and the caller must keep the money.
            raise LedgerUnavailable(f"PostgreSQL ledger at {self.where} is unavailable: {e}") from e

    # ----------------------------------------------------------------- LedgerStore
    def _set_budget(
        self, scope: str, budget: Budget, reset: bool, only_if_absent: bool, idle_ttl_s: float | None
    ) -> bool:
        ((done,),) = self._ledger("set_budget", scope, budget_json(budget), to_nanos(budget.usd),
                                budget.period_s, reset, only_if_absent, idle_ttl_s)
        return bool(done)

    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        scopes = scope_names(scopes)
        if not scopes:
            return []
        found = {row[1]: row for row in self._ledger("states", list(scopes))}
        return [_snapshot(found[s]) if s in found else None for s in scopes]

    def scopes(self) -> list[str]:
        return sorted(name for (name,) in self._ledger("scopes"))

    def _reserve(self, reservation_id: str, chain: tuple[str, ...], nanos: int, ttl_s: float) -> None:
        ((outcome,),) = self._ledger("reserve", reservation_id, list(chain), nanos, ttl_s)
        refuse(reservation_id, nanos, outcome)

    def _reserve_many(self, holds: list[tuple[str, tuple[str, ...], int, float]]) -> list[Exception | None]:
        if len(holds) < 2:
            return super()._reserve_many(holds)
        # One pipelined round trip, each hold its own transaction, as if sent one by one.
        try:
            replies = self._run_all([("reserve", self._params(rid, list(chain), nanos, ttl_s))
                                     for rid, chain, nanos, ttl_s in holds])
        except LedgerUnavailable as error:
            return [error] * len(holds)
        # Each refusal is its hold's own: the holds made beside it stand.
        return [refusal(rid, nanos, outcome) for (rid, _, nanos, _), ((outcome,),) in zip(holds, replies, strict=True)]

    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:
        ((outcome,),) = self._ledger("commit", reservation_id, nanos, model)
        if outcome == "unknown":
            raise unknown_reservation(reservation_id)
        return outcome == "ok"

    def _commit_books(
        self, reservation_id: str, nanos: int, model: str | None, scopes: tuple[str, ...], pace: Pace | None
    ) -> Committed:
        # The books before, the commit and the books after in one round trip (three transactions:
        # under READ COMMITTED another commit may come between them, as between separate calls); λ,
        # computed here from the books before, takes a second.
        fixed = (self._now(), self._retention_s, self._max_finished)
        read = ("states", (*fixed, list(scopes)))
        found_before, ((outcome,),), found_after = self._run_all(
            [read, ("commit", (*fixed, reservation_id, nanos, model)), read]
        )
        if outcome == "unknown":
            raise unknown_reservation(reservation_id)
        before, after = ([_snapshot(row) for row in _in_order(found, scopes)] for found in (found_before, found_after))
        if outcome != "ok":
            return Committed(False, before, after)
        moved = move_lambdas(self, before, pace)
        return Committed(True, before, [replace(s, lam=moved.get(s.scope, s.lam)) for s in after])

    def _release(self, reservation_id: str) -> bool:
        ((released,),) = self._ledger("release", reservation_id)
        return bool(released)

    def _adjust_lambda(self, scope: str, value: float) -> None:
        if not self._run("lambda", (value, scope)):
            raise no_budget(scope)

    def open_reservations(self) -> int:
        ((count,),) = self._run("open", (self._now(),))
        return int(count)

    def remembered_since(self) -> float:
        ((since,),) = self._run("since", (self._now(), self._retention_s))
        return float(since)

    def close(self) -> None:
        with self._pool_lock:
            if self._pid == os.getpid():
                self._pool.close()
            else:
                _INHERITED.append(self._pool)

    @property
    def url(self) -> str:
        return f"{self.where}?schema={self.schema}"

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}, schema={self.schema!r})"


def _in_order(rows: Sequence[tuple[Any, ...]], scopes: Sequence[str]) -> list[tuple[Any, ...]]:
    """The states function's rows in the order of `scopes` (scopes without a budget skipped)."""
    found = {row[1]: row for row in rows}
    return [found[s] for s in scopes if s in found]


def _configure(conn: psycopg.Connection) -> None:
    # The locking (see the module's docstring) is designed for READ COMMITTED, whatever the server's default.
    conn.execute("SET default_transaction_isolation = 'read committed'")
    # A row another session keeps locked (a client frozen mid-transaction) must not stall every request.
    conn.execute(f"SET statement_timeout = {_STATEMENT_TIMEOUT_MS}")
    conn.execute(f"SET lock_timeout = {_STATEMENT_TIMEOUT_MS}")


def _sever(conn: psycopg.Connection) -> None:
    """Shut the socket of a connection whose server stopped answering: the blocked call fails at once."""
    logger.warning("PostgreSQL ledger: no answer in %g s; closing the connection", _SEVER_S)
    try:
        socket.socket(fileno=os.dup(conn.fileno())).shutdown(socket.SHUT_RDWR)
    except OSError:
        logger.debug("the connection was already closed", exc_info=True)


def _location(host: str | None, port: str | int | None, dbname: str | None) -> str:
    """postgresql://host:port/dbname, without credentials (a socket directory as host is %-encoded)."""
    host = host or ""
    shown = f"[{host}]" if ":" in host else quote(host, safe="")
    return f"postgresql://{shown}:{port or 5432}/{quote(dbname or '', safe='')}"


def _snapshot(row: Sequence[Any]) -> ScopeState:
    """A scope's books from a row of ledger_states, rolled into the period current at the read."""
    (now, name, budget, period_start, committed, reserved, requests, released, expired, lam, idle_ttl_s,
     models, nanos, calls) = row
    books = ScopeBooks(
        scope=name,
        budget=budget_from_json(budget),
        period_start=period_start,
        committed=committed,
        reserved=reserved,
        requests=requests,
        released=released,
        expired=expired,
        lam=lam,
        idle_ttl_s=idle_ttl_s,
        spend=dict(zip(models or (), nanos or (), strict=False)),
        calls=dict(zip(models or (), calls or (), strict=False)),
    )
    books.roll(now)  # a view of the new period; the next write stores it
    return books.snapshot()


def open_url(url: StoreURL, must_exist: bool, **options: Any) -> PostgresStore:
    """The ledger at postgresql://user@host:port/db; with `must_exist`, only in a schema that holds one."""
    url.check_port()
    # libpq takes the URL itself (user, password, host, port, database); the options are the store's.
    return PostgresStore(url.bare, **url.store_options(), **options, create=not must_exist)
