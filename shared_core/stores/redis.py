"""A ledger in Redis: one budget shared by every process on every host that reaches the server.

Each operation is one Lua script, which Redis runs atomically: the check of every enclosing
scope and the charge to all of them happen together. Money is held as whole nano-dollars
(HINCRBY on the server; Lua compares them as doubles, exact below 2⁵³). Time comes from the
Redis server's clock, so hosts with drifting clocks agree on when a reservation expires.

The client retries a script whose connection broke; every script is safe to run twice (a
repeated reserve of the same id holds once, a repeated commit charges once). Scripts touch keys
they compute from scope names, so use a standalone Redis (not Cluster), and turn on its
persistence (appendonly yes) if spend must survive a restart of the server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib.resources import files
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..budget import (
    DEFAULT_MAX_FINISHED,
    DEFAULT_RETENTION_S,
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
from ..pacing import DualPacer, PaceUpdate
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

__all__ = ["RedisStore", "DEFAULT_PREFIX"]

#: Prefix of every key the ledger writes, unless the URL gives `?prefix=`.
DEFAULT_PREFIX = "omniroute:"
#: redis:// URLs may set the key prefix and the outage cool-down (seconds; see base.Outage).
URL_OPTIONS = frozenset({"prefix", "unreachable_cooldown_s"})


def _lua(name: str) -> str:
    """The text of redis_<name>.lua, which ships beside this module."""
    return (files(__package__) / f"redis_{name}.lua").read_text(encoding="utf-8")


# Each operation's script: the functions they all use (the prelude), then its own body.
_SCRIPTS = {
    name: _lua("prelude") + _lua(name)
    for name in ("set_budget", "states", "reserve", "commit", "release", "lambda", "open", "scopes", "since")
}


class RedisStore(LedgerStore):
    """A ledger in Redis, atomic through Lua scripts; many processes and hosts share one budget.

    The client must decode responses (`decode_responses=True`, as `from_url` sets).
    `clock=None` (the default) uses the server's clock; give a clock only to test with fake time.
    `retention_s` and `max_finished` bound how long and how many finished reservations are
    remembered (see LedgerStore): at most `max_finished` hold keys beside the open ones. Once the
    server is found unreachable, calls fail at once for `unreachable_cooldown_s` (see `base.Outage`).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
        max_finished: int = DEFAULT_MAX_FINISHED,
        unreachable_cooldown_s: float = DEFAULT_UNREACHABLE_COOLDOWN_S,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"the Redis key prefix must be a non-empty string, got {prefix!r}")
        if not client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must be made with decode_responses=True")
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._retention_s = repr(check_retention(retention_s))
        self._max_finished = check_max_finished(max_finished)
        self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
        kw = client.connection_pool.connection_kwargs
        self.where = f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        self._outage = Outage(self.where, unreachable_cooldown_s)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on a new client for `url` (redis://host:port/db), with short timeouts and 3 retries
        of a dropped or refused connection."""
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            # A reply that has not come in 5 s is not retried: a hung server would hold each call
            # four times as long (and routing's workers with it) for an answer that is not coming.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3,
                        supported_errors=(redis.ConnectionError,)),
        )
        return cls(client, **options)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn a connection that failed even after retries, or a server that cannot take the call
        now (busy, loading, read-only, out of memory), into LedgerUnavailable; FailingFast, untried,
        while an outage found moments before lasts (see `base.Outage`)."""
        with self._outage.attempt():
            try:
                yield
            except (redis.ConnectionError, redis.TimeoutError) as e:
                raise LedgerUnavailable(f"Redis ledger at {self.where} is unreachable: {e}") from e
            except redis.ResponseError as e:
                if isinstance(e, (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)) \
                        or str(e).startswith(("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN")):
                    # The server is there but cannot answer now (a long script, loading its data) or
                    # cannot write (a replica after a failover, full memory): what a commit meant
                    # to record is kept to retry, as when the server is gone.
                    raise LedgerUnavailable(f"Redis ledger at {self.where} cannot take the call now: {e}") from e
                if "DB index is out of range" in str(e):  # the URL's /db: redis-py raises no class of its own for it
                    raise ValueError(f"Redis ledger at {self.where}: the server has no such database ({e})") from e
                raise

    def _run(self, script: str, *args: Any) -> Any:
        with self._reaching():
            return self._scripts[script](args=self._args(*args))

    def _args(self, *args: Any) -> list[Any]:
        """A script's arguments: the prelude's (prefix, time, retention bounds), then its own `args`."""
        now = "" if self._clock is None else repr(float(self._clock()))
        return [self.prefix, now, self._retention_s, self._max_finished, *args]

    def _set_budget(
        self, scope: str, budget: Budget, reset: bool, only_if_absent: bool, idle_ttl_s: float | None
    ) -> bool:
        period = "" if budget.period_s is None else repr(budget.period_s)
        flags = ("1" if reset else "0", "1" if only_if_absent else "0")
        idle = "" if idle_ttl_s is None else repr(idle_ttl_s)
        return bool(
            self._run("set_budget", scope, to_nanos(budget.usd), budget_json(budget), period, *flags, idle)
        )

    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        scopes = scope_names(scopes)
        if not scopes:
            return []
        return [_snapshot(scope, found) for scope, found in zip(scopes, self._run("states", *scopes), strict=False)]

    def scopes(self) -> list[str]:
        return sorted(self._run("scopes"))

    def _reserve(self, reservation_id: str, chain: tuple[str, ...], nanos: int, ttl_s: float) -> None:
        refuse(reservation_id, nanos, self._run("reserve", reservation_id, json.dumps(chain), nanos, repr(ttl_s)))

    def _reserve_many(self, holds: list[tuple[str, tuple[str, ...], int, float]]) -> list[Exception | None]:
        if len(holds) < 2:
            return super()._reserve_many(holds)
        # One pipelined round trip: each reserve script runs on its own, as if sent one by one
        # (a retry after a dropped connection resends them all, and a repeated hold is a no-op).
        pipe = self.client.pipeline(transaction=False)
        for rid, chain, nanos, ttl_s in holds:
            self._scripts["reserve"](args=self._args(rid, json.dumps(chain), nanos, repr(ttl_s)), client=pipe)
        try:
            with self._reaching():
                replies = pipe.execute(raise_on_error=False)
        except LedgerUnavailable as error:
            return [error] * len(holds)
        return [self._outcome(rid, nanos, reply) for (rid, _, nanos, _), reply in zip(holds, replies, strict=True)]

    def _outcome(self, reservation_id: str, nanos: int, reply: Any) -> Exception | None:
        """What one reply of a pipelined reserve means, as `_reserve` would have raised it (an error
        reply, e.g. a server out of memory, is that hold's alone: the holds made beside it stand)."""
        if not isinstance(reply, Exception):
            return refusal(reservation_id, nanos, reply)
        try:
            with self._reaching():
                raise reply
        except Exception as error:
            return error

    def _commit(self, reservation_id: str, nanos: int, model: str | None) -> bool:
        return self._commit_books(reservation_id, nanos, model, (), None).charged

    def _commit_books(
        self, reservation_id: str, nanos: int, model: str | None, scopes: tuple[str, ...], pace: Pace | None
    ) -> Committed:
        # One script commits, reads the books around it and moves λ by the dual pacer's rule (its
        # arithmetic in Lua: redis_commit.lua). Any other pace — a subclass of either class may
        # compute θ otherwise — is computed here from the books before, its λ stored by a second script.
        server_side = type(pace) is PaceUpdate and type(pace.pacer) is DualPacer
        rule = _pace_json(pace) if server_side else ""  # type: ignore[arg-type]  # a PaceUpdate when server_side
        outcome, *around = self._run(
            "commit", reservation_id, nanos, json.dumps(scopes), rule, *(() if model is None else (model,))
        )
        if outcome == "unknown":
            raise unknown_reservation(reservation_id)
        before, after = ([s for s in map(_snapshot, scopes, found) if s is not None] for found in around)
        if outcome != "ok" or server_side:
            return Committed(outcome == "ok", before, after)
        moved = move_lambdas(self, before, pace, lambda thetas: self._run("lambda", *_flat(thetas)))
        return Committed(True, before, [replace(s, lam=moved.get(s.scope, s.lam)) for s in after])

    def _release(self, reservation_id: str) -> bool:
        return bool(self._run("release", reservation_id))

    def _adjust_lambda(self, scope: str, value: float) -> None:
        if not self._run("lambda", scope, repr(value))[0]:
            raise no_budget(scope)

    def open_reservations(self) -> int:
        return int(self._run("open"))

    def remembered_since(self) -> float:
        return float(self._run("since"))

    def close(self) -> None:
        self.client.close()

    @property
    def url(self) -> str:
        return f"{self.where}?prefix={self.prefix}"

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, prefix={self.prefix!r})"


def _snapshot(scope: str, found: Sequence[Sequence[str]]) -> ScopeState | None:
    """A scope's books from the states script's reply (empty when the scope has no budget)."""
    if not found:
        return None
    fields, spend, calls = (_pairs(x) for x in found)
    return ScopeBooks(
        scope=scope, budget=budget_from_json(fields["budget"]),
        period_start=float(fields["period_start"]), committed=int(fields["committed"]),
        reserved=int(fields["reserved"]), requests=int(fields["requests"]), released=int(fields["released"]),
        expired=int(fields["expired"]), lam=float(fields["lam"]) if fields["lam"] else None,
        idle_ttl_s=float(fields["idle_ttl_s"]) if fields.get("idle_ttl_s") else None,
        spend={m: int(v) for m, v in spend.items()}, calls={m: int(v) for m, v in calls.items()},
    ).snapshot()


def _pace_json(pace: PaceUpdate) -> str:
    """What the commit script needs of a dual update to make it (redis_commit.lua's theta_after)."""
    pacer = pace.pacer
    return json.dumps({"cost": pace.cost, "scopes": sorted(pace.scopes), "warm": pacer.is_warm, "step": pacer.step,
                       "warm_step": pacer.warm_step, "initial": pacer.initial, "max_theta": pacer.max_theta})


def _flat(lams: dict[str, float]) -> list[str]:
    """{scope: λ} as the lambda script's arguments: scope, λ, scope, λ, ..."""
    return [x for scope, lam in lams.items() for x in (scope, repr(lam))]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL's flat [field, value, ...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))



def open_url(url: StoreURL, must_exist: bool, **options: Any) -> RedisStore:
    """The ledger at redis://host:port/db or rediss:// (`must_exist` is moot: keys appear on first use)."""
    if not url.hostname:
        raise url.malformed("no host")
    url.check_port()
    db = url.path.removeprefix("/")
    if db and not db.isdigit():
        raise url.malformed(f"the database must be a number, got {db!r}")
    return RedisStore.from_url(url.bare, **url.store_options(), **options)
