"""Helpers shared by the ledger tests: stores of every kind, the Redis and PostgreSQL checks, a fake clock."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared_core.budget import LedgerStore, LedgerUnavailable
from shared_core.stores import open_store

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432
#: The test database: trust auth, as CI's server is set up (.ci/run).
PG_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


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
def _memory_url(tmp_path: Path) -> Iterator[str]:
    yield "memory://"


@contextmanager
def _sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'ledger.db'}"


@contextmanager
def _redis_url(tmp_path: Path) -> Iterator[str]:
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


@contextmanager
def _postgres_url(tmp_path: Path) -> Iterator[str]:
    require_postgres()
    schema = f"omniroute_test_{uuid.uuid4().hex}"
    try:
        yield f"{PG_URL}?schema={schema}"
    finally:
        with postgres_admin() as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _memory_finished(store: Any) -> int:
    return len(store._done)


def _sqlite_finished(store: Any) -> int:
    import sqlite3

    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT count(*) FROM holds WHERE status <> 'open'").fetchone()[0]


def _redis_finished(store: Any) -> int:
    client, prefix = store.client, store.prefix
    holds = sum(1 for _ in client.scan_iter(match=prefix + "hold:*", count=1000))
    return holds - client.zcard(prefix + "open")


def _postgres_finished(store: Any) -> int:
    with postgres_admin() as db:
        return db.execute(f'SELECT count(*) FROM "{store.schema}".holds WHERE status <> %s', ("open",)).fetchone()[0]


@dataclass(frozen=True)
class StoreKind:
    """How the tests make a fresh, empty store of one kind and look inside it.

    url: tmp_path → a context manager yielding the store's URL (and cleaning up after it);
    scheme: the URL scheme `open_store` knows it by; finished: a store → how many finished
    reservations it keeps records of; durable: what it holds outlives the process (and other
    processes can open it from the URL).
    """

    url: Callable[[Path], AbstractContextManager[str]]
    scheme: str
    finished: Callable[[Any], int]
    durable: bool


#: Every store kind the ledger tests run on. A new store is one entry here: the tests
#: parametrised over STORES (or DURABLE) then run the same assertions on it.
KINDS: dict[str, StoreKind] = {
    "memory": StoreKind(_memory_url, "memory", _memory_finished, durable=False),
    "sqlite": StoreKind(_sqlite_url, "sqlite", _sqlite_finished, durable=True),
    "redis": StoreKind(_redis_url, "redis", _redis_finished, durable=True),
    "postgres": StoreKind(_postgres_url, "postgresql", _postgres_finished, durable=True),
}
STORES = tuple(KINDS)
DURABLE = tuple(kind for kind, spec in KINDS.items() if spec.durable)


def store_url(kind: str, tmp_path: Path) -> AbstractContextManager[str]:
    """A URL for a fresh, empty store of `kind`; Redis keys and PostgreSQL schemas are removed afterwards."""
    if kind not in KINDS:
        raise ValueError(f"unknown store kind {kind!r}; add it to KINDS in tests/ledger_support.py")
    return KINDS[kind].url(tmp_path)


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
    scheme = urlsplit(store.url).scheme
    for spec in KINDS.values():
        if spec.scheme == scheme:
            return spec.finished(store)
    raise TypeError(f"no store kind in tests/ledger_support.py KINDS has the scheme {scheme!r}")


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

    def commit_books(self, reservation_id: str, actual: float, model: str | None = None, **books: Any) -> Any:
        if self.down:
            raise LedgerUnavailable("redis: connection refused")
        return super().commit_books(reservation_id, actual, model, **books)  # type: ignore[misc]

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


def assert_a_dropped_attempt_is_charged(router: Any, provider: Any, scope: str, models: tuple[str, str],
                                        candidate: str, cap: int) -> None:
    """The provider billed two requests — the first (model `models[0]`) dropped before its answer arrived,
    the second answered — and `scope`'s books hold the first attempt's worst case (`candidate`'s, with
    `cap` output tokens) plus the second's bill: never less than the bill, nothing left reserved."""
    assert provider.wait_idle()
    dropped, answered = provider.requests
    assert (dropped.model, answered.model) == models and dropped.cost_usd > 0
    worst = router.candidate(candidate).worst_case_cost(dropped.prompt_tokens, cap)
    state = router.budget_state(scope)
    assert state.reserved == 0 and state.committed >= provider.bill_usd - 1e-9
    assert state.committed == pytest.approx(worst + answered.cost_usd, abs=1e-9)
