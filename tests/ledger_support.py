"""Helpers shared by the ledger tests: stores of every kind, the Redis and PostgreSQL checks, a fake clock."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared_core.budget import LedgerStore, LedgerUnavailable
from shared_core.stores import open_store

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432
#: The test database: trust auth, as CI's server is set up (.ci/run).
PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
#: Every store kind; tests parametrised over these run the same assertions on each.
STORES = ("memory", "sqlite", "redis", "postgres")


@functools.cache
def _redis_problem() -> str | None:
    """Why Redis cannot be used here, or None when a server answers on 127.0.0.1:6379."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install 'omniroute[redis]')"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        return f"no Redis server answers on {REDIS_HOST}:{REDIS_PORT} ({e})"
    finally:
        client.close()
    return None


def _require(problem: str | None, flag: str, remedy: str) -> None:
    """Skip the test for `problem`, but fail it when the environment variable `flag` is 1 (CI)."""
    if problem is None:
        return
    if os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 but {problem}")
    pytest.skip(f"{problem}; {remedy} to run this test (CI sets {flag}=1)")


def require_redis() -> None:
    """Skip the test when Redis is absent, but fail it when OMNIROUTE_REQUIRE_REDIS=1 (CI)."""
    _require(_redis_problem(), "OMNIROUTE_REQUIRE_REDIS", "start redis-server")


def redis_admin() -> Any:
    """A plain client for inspecting and cleaning the test server."""
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)


@functools.cache
def _postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used here, or None when the test database answers."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'omniroute[postgres]')"
    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
    except psycopg.Error as e:
        return f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} as {PG_URL} ({str(e).strip()})"
    return None


def require_postgres() -> None:
    """Skip the test when PostgreSQL is absent, but fail it when OMNIROUTE_REQUIRE_POSTGRES=1 (CI)."""
    _require(_postgres_problem(), "OMNIROUTE_REQUIRE_POSTGRES", "start PostgreSQL")


def postgres_admin() -> Any:
    """A plain autocommit connection to the test database, for inspecting and cleaning it."""
    import psycopg

    return psycopg.connect(PG_URL, autocommit=True)


@contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL for a fresh, empty store of `kind`; Redis keys and PostgreSQL schemas are removed afterwards."""
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    elif kind == "redis":
        require_redis()
        prefix = f"omniroute-test:{uuid.uuid4().hex}:"
        try:
            yield f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
        finally:
            admin = redis_admin()
            keys = list(admin.scan_iter(match=prefix + "*", count=1000))
            if keys:
                admin.delete(*keys)
            admin.close()
    elif kind == "postgres":
        require_postgres()
        schema = f"omniroute_test_{uuid.uuid4().hex}"
        try:
            yield f"{PG_URL}?schema={schema}"
        finally:
            with postgres_admin() as admin:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        raise ValueError(f"unknown store kind {kind!r}")


@contextmanager
def ledger(kind: str, tmp_path: Path, **options: Any) -> Iterator[LedgerStore]:
    """A fresh store of `kind` (options such as clock= go to its constructor), closed afterwards."""
    with store_url(kind, tmp_path) as url:
        store = open_store(url, **options)
        try:
            yield store
        finally:
            store.close()


def finished_records(store: LedgerStore) -> int:
    """How many finished reservations `store` keeps records of: entries, rows or hold keys beside the open ones."""
    kind = type(store).__name__
    if kind.endswith("MemoryStore"):
        return len(store._done)  # type: ignore[attr-defined]
    if kind.endswith("SQLiteStore"):
        import sqlite3

        with sqlite3.connect(store.path) as db:  # type: ignore[attr-defined]
            return db.execute("SELECT count(*) FROM holds WHERE status <> 'open'").fetchone()[0]
    if kind.endswith("RedisStore"):
        client, prefix = store.client, store.prefix  # type: ignore[attr-defined]
        holds = sum(1 for _ in client.scan_iter(match=prefix + "hold:*", count=1000))
        return holds - client.zcard(prefix + "open")
    if kind.endswith("PostgresStore"):
        with postgres_admin() as db:
            return db.execute(f'SELECT count(*) FROM "{store.schema}".holds WHERE status <> %s',  # type: ignore[attr-defined]
                              ("open",)).fetchone()[0]
    raise TypeError(f"no way to count the finished reservations of a {kind}")


class FakeClock:
    """A clock that moves only when told to, for expiry and period tests."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


class Blinking:
    """Mixin for a ledger store whose commits and releases fail while `down` is set, as they do
    when Redis is unreachable: `class BlinkingStore(Blinking, MemoryStore)`."""

    down = False

    def commit(self, reservation_id: str, actual: float, model: str | None = None) -> bool:
        if self.down:
            raise LedgerUnavailable("redis: connection refused")
        return super().commit(reservation_id, actual, model)  # type: ignore[misc]

    def release(self, reservation_id: str) -> bool:
        if self.down:
            raise LedgerUnavailable("redis: connection refused")
        return super().release(reservation_id)  # type: ignore[misc]


class PrivateRedis:
    """A redis-server of the test's own on a free port (to restart it, or to fill it to its maxmemory)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        import shutil
        import socket

        binary = shutil.which("redis-server")
        if binary is None:
            problem = "no redis-server program on PATH"
            if os.environ.get("OMNIROUTE_REQUIRE_REDIS") == "1":
                pytest.fail(f"OMNIROUTE_REQUIRE_REDIS=1 but {problem}")
            pytest.skip(f"{problem}; install redis-server to run this test")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                        "--appendonly", "no", "--dir", str(tmp_path), *args]
        self.process: Any = None
        self.start()

    @property
    def url(self) -> str:
        """The server's URL for open_store."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        """A plain client for inspecting and filling the server."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self) -> None:
        """Start the server and wait until it answers."""
        import subprocess
        import time

        import redis

        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL the server: without persistence, everything it held is gone."""
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """Stop the server if it runs."""
        if self.process is not None and self.process.poll() is None:
            self.kill()
