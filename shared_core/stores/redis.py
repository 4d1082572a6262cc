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
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..errors import UnknownReservation
from ..budget import (
    DEFAULT_RETENTION_S,
    Budget,
    BudgetExceeded,
    LedgerStore,
    LedgerUnavailable,
    ScopeBooks,
    ScopeState,
    UnknownScope,
    check_idle_ttl,
    check_reservation,
    check_retention,
    scope_chain,
    to_nanos,
)

__all__ = ["RedisStore", "DEFAULT_PREFIX"]

#: Prefix of every key the ledger writes, unless the URL gives `?prefix=`.
DEFAULT_PREFIX = "omniroute:"

# Every script starts with ARGV = prefix, now ('' = the server's clock), retention in seconds.
_PRELUDE = """
local P = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local RETAIN = tonumber(ARGV[3])
local OPEN, DONE, IDLE = P .. 'open', P .. 'done', P .. 'idle'

local function skey(s) return P .. 'scope:' .. s end

-- A scope exists when its hash holds a budget: a hash an eviction left partial (or that only a
-- late commit re-created) is no scope, and is never written to but by set_budget, which rebuilds it.
local function scoped(s) return redis.call('HEXISTS', skey(s), 'budget') == 1 end

-- A whole number of nano-dollars as the plain digits HINCRBY accepts. Lua numbers are doubles,
-- and Redis turns a number argument into text itself: negating a zero gives -0, which becomes
-- "-0", and HINCRBY refuses it ("value is not an integer or out of range"). Money and counts
-- therefore reach HINCRBY only through incr, as text made here.
local function int(n)
  if n == 0 then return '0' end
  return string.format('%.0f', n)
end

local function incr(k, field, n) return redis.call('HINCRBY', k, field, int(n)) end

-- Activity on a forgettable scope (one with idle_ttl_s) restarts its idle time.
local function touch(s)
  local ttl = tonumber(redis.call('HGET', skey(s), 'idle_ttl_s'))
  if ttl then redis.call('ZADD', IDLE, now + ttl, s) end
end

-- Start a new period when the current one is over: spend and counts of the old one reset.
local function roll(s)
  local k = skey(s)
  local f = redis.call('HMGET', k, 'period_s', 'period_start')
  local period = tonumber(f[1])
  if period then
    local start = tonumber(f[2])
    if now - start >= period then
      start = start + period * math.floor((now - start) / period)
      redis.call('HSET', k, 'period_start', start, 'committed', 0, 'requests', 0, 'released', 0, 'expired', 0)
      redis.call('DEL', P .. 'spend:' .. s, P .. 'calls:' .. s)
    end
  end
end

-- A reservation is over: remember how it ended for RETAIN seconds (from when it first ended).
local function finish(id, status)
  redis.call('HSET', P .. 'hold:' .. id, 'status', status)
  redis.call('ZREM', OPEN, id)
  redis.call('ZADD', DONE, 'NX', now + RETAIN, id)
end

-- Lapse reservations whose time is up (their money returns; the record stays for late
-- commits) and forget, a thousand at a time, those finished more than RETAIN seconds ago.
local function sweep()
  -- At most SWEEP holds per script, so that a backlog never blocks the server (what is left
  -- lapses in the next scripts; until then it is still counted as held: refusals err safe).
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', OPEN, '-inf', now, 'LIMIT', 0, 1000)) do
    local f = redis.call('HMGET', P .. 'hold:' .. id, 'scopes', 'amount')
    for _, s in ipairs(cjson.decode(f[1])) do
      if scoped(s) then
        incr(skey(s), 'reserved', -tonumber(f[2]))
        incr(skey(s), 'expired', 1)
      end
    end
    finish(id, 'lapsed')
  end
  local old = redis.call('ZRANGEBYSCORE', DONE, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(old) do redis.call('DEL', P .. 'hold:' .. id) end
  if #old > 0 then redis.call('ZREM', DONE, unpack(old)) end
  -- Forget, a thousand at a time, scopes idle past their idle_ttl_s that hold no money.
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', IDLE, '-inf', now, 'LIMIT', 0, 1000)) do
    local f = redis.call('HMGET', skey(s), 'reserved', 'idle_ttl_s')
    if tonumber(f[1]) and tonumber(f[1]) ~= 0 and tonumber(f[2]) then
      redis.call('ZADD', IDLE, now + tonumber(f[2]), s)  -- look again once its holds could have lapsed
    else
      redis.call('DEL', skey(s), P .. 'spend:' .. s, P .. 'calls:' .. s)
      redis.call('SREM', P .. 'scopes', s)
      redis.call('ZREM', IDLE, s)
    end
  end
end
"""

_SCRIPTS = {
    # ARGV[4] scope, ARGV[5] usd in nanos, ARGV[6] budget JSON, ARGV[7] period_s or '',
    # ARGV[8] '1' to reset the period's spend, ARGV[9] '1' to set only a scope without a budget,
    # ARGV[10] idle_ttl_s or '' → 0 when ARGV[9] found a budget (nothing changed), else 1.
    # The rule is LedgerStore.set_budget's.
    "set_budget": """
sweep()
local s = ARGV[4]
local k = skey(s)
if not scoped(s) then
  redis.call('DEL', k, P .. 'spend:' .. s, P .. 'calls:' .. s)
  redis.call('HSET', k, 'period_start', now, 'committed', 0, 'reserved', 0, 'requests', 0,
             'released', 0, 'expired', 0, 'lam', '')
  redis.call('SADD', P .. 'scopes', s)
elseif ARGV[9] == '1' then
  return 0
else
  roll(s)
  if ARGV[8] == '1' then
    redis.call('HSET', k, 'period_start', now, 'committed', 0, 'requests', 0, 'released', 0, 'expired', 0)
    redis.call('DEL', P .. 'spend:' .. s, P .. 'calls:' .. s)
  elseif tonumber(redis.call('HGET', k, 'period_s')) ~= tonumber(ARGV[7]) then
    -- a changed period (none, some or another length) starts now and keeps the spend it has
    redis.call('HSET', k, 'period_start', now)
  end
end
redis.call('HSET', k, 'usd', ARGV[5], 'budget', ARGV[6], 'period_s', ARGV[7], 'idle_ttl_s', ARGV[10])
if ARGV[10] == '' then redis.call('ZREM', IDLE, s) else touch(s) end
return 1
""",
    # ARGV[4..] scopes → for each, {} when it has no budget, else {scope hash, spend, calls}
    "states": """
sweep()
local found = {}
for i = 4, #ARGV do
  local s = ARGV[i]
  if not scoped(s) then
    found[#found + 1] = {}
  else
    roll(s)
    found[#found + 1] = {redis.call('HGETALL', skey(s)), redis.call('HGETALL', P .. 'spend:' .. s),
                         redis.call('HGETALL', P .. 'calls:' .. s)}
  end
end
return found
""",
    # ARGV[4] id, ARGV[5] scopes JSON, ARGV[6] amount, ARGV[7] ttl_s
    "reserve": """
sweep()
local id, scopes_json, amount = ARGV[4], ARGV[5], tonumber(ARGV[6])
local h = P .. 'hold:' .. id
local held = redis.call('HMGET', h, 'status', 'scopes', 'amount')
if held[1] then
  if held[1] == 'open' and held[2] == scopes_json and tonumber(held[3]) == amount then return {'ok'} end
  return {'used'}
end
local scopes = cjson.decode(scopes_json)
for _, s in ipairs(scopes) do
  if not scoped(s) then return {'unknown', s} end
end
for _, s in ipairs(scopes) do
  roll(s)
  local f = redis.call('HMGET', skey(s), 'usd', 'committed', 'reserved')
  local left = tonumber(f[1]) - tonumber(f[2]) - tonumber(f[3])
  -- a hold of 0 always fits, even where spend is past the budget (left < 0)
  if amount > 0 and amount > left then return {'exceeded', s, int(left)} end
end
for _, s in ipairs(scopes) do
  incr(skey(s), 'reserved', amount)
  touch(s)
end
local expires = now + tonumber(ARGV[7])
redis.call('HSET', h, 'status', 'open', 'scopes', scopes_json, 'amount', int(amount))
redis.call('ZADD', OPEN, expires, id)
return {'ok'}
""",
    # ARGV[4] id, ARGV[5] actual, ARGV[6] model (absent when None)
    "commit": """
sweep()
local id, actual, model = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local h = P .. 'hold:' .. id
local f = redis.call('HMGET', h, 'status', 'scopes', 'amount')
if not f[1] then return 'unknown' end
if f[1] == 'committed' then return 'repeat' end
for _, s in ipairs(cjson.decode(f[2])) do
  if scoped(s) then
    roll(s)
    local k = skey(s)
    if f[1] == 'open' then incr(k, 'reserved', -tonumber(f[3])) end
    incr(k, 'committed', actual)
    incr(k, 'requests', 1)
    if model then
      incr(P .. 'spend:' .. s, model, actual)
      incr(P .. 'calls:' .. s, model, 1)
    end
    touch(s)
  end
end
finish(id, 'committed')
return 'ok'
""",
    # ARGV[4] id → 1 when an open reservation was released
    "release": """
sweep()
local id = ARGV[4]
local h = P .. 'hold:' .. id
local f = redis.call('HMGET', h, 'status', 'scopes', 'amount')
if f[1] ~= 'open' then return 0 end
for _, s in ipairs(cjson.decode(f[2])) do
  if scoped(s) then
    roll(s)
    incr(skey(s), 'reserved', -tonumber(f[3]))
    incr(skey(s), 'released', 1)
    touch(s)
  end
end
finish(id, 'released')
return 1
""",
    # ARGV[4] scope, ARGV[5] λ → 0 when the scope has no budget
    "lambda": """
if not scoped(ARGV[4]) then return 0 end
redis.call('HSET', skey(ARGV[4]), 'lam', ARGV[5])
return 1
""",
    "open": """
sweep()
return redis.call('ZCARD', OPEN)
""",
    "scopes": """
sweep()
return redis.call('SMEMBERS', P .. 'scopes')
""",
}


class RedisStore(LedgerStore):
    """A ledger in Redis, atomic through Lua scripts; many processes and hosts share one budget.

    The client must decode responses (`decode_responses=True`, as `from_url` sets).
    `clock=None` (the default) uses the server's clock; give a clock only to test with fake time.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"the Redis key prefix must be a non-empty string, got {prefix!r}")
        if not client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must be made with decode_responses=True")
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._retention_s = repr(check_retention(retention_s))
        self._scripts = {name: client.register_script(_PRELUDE + body) for name, body in _SCRIPTS.items()}
        kw = client.connection_pool.connection_kwargs
        self.where = f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on a new client for `url` (redis://host:port/db), with short timeouts and 3 retries."""
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=2.0,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3),
        )
        return cls(client, **options)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn a connection that failed even after retries into LedgerUnavailable."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise LedgerUnavailable(f"Redis ledger at {self.where} is unreachable: {e}") from e
        except redis.ResponseError as e:
            if str(e).startswith(("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN")):
                # The server is there but cannot answer now (a long script, loading its data).
                raise LedgerUnavailable(f"Redis ledger at {self.where} is busy: {e}") from e
            raise

    def _run(self, script: str, *args: Any) -> Any:
        now = "" if self._clock is None else repr(float(self._clock()))
        with self._reaching():
            return self._scripts[script](args=[self.prefix, now, self._retention_s, *args])

    def set_budget(
        self, scope: str, budget: Budget, *, reset: bool = False, only_if_absent: bool = False,
        idle_ttl_s: float | None = None,
    ) -> bool:
        scope_chain(scope)
        idle_ttl_s = check_idle_ttl(idle_ttl_s)
        period = "" if budget.period_s is None else repr(budget.period_s)
        flags = ("1" if reset else "0", "1" if only_if_absent else "0")
        idle = "" if idle_ttl_s is None else repr(idle_ttl_s)
        return bool(self._run("set_budget", scope, to_nanos(budget.usd), budget.model_dump_json(), period, *flags, idle))

    def states(self, scopes: Sequence[str]) -> list[ScopeState | None]:
        if not scopes:
            return []
        return [_snapshot(scope, found) for scope, found in zip(scopes, self._run("states", *scopes))]

    def scopes(self) -> list[str]:
        return sorted(self._run("scopes"))

    def reserve(self, reservation_id: str, scopes: Sequence[str], amount: float, ttl_s: float) -> None:
        nanos = to_nanos(amount, "reservation amount")
        chain = check_reservation(scopes, ttl_s)
        outcome = self._run("reserve", reservation_id, json.dumps(chain), nanos, repr(float(ttl_s)))
        if outcome[0] == "used":
            raise ValueError(f"reservation id {reservation_id!r} is already used")
        if outcome[0] == "unknown":
            raise UnknownScope(f"scope {outcome[1]!r} has no budget")
        if outcome[0] == "exceeded":
            raise BudgetExceeded.no_room(outcome[1], nanos, int(outcome[2]))

    def commit(self, reservation_id: str, actual: float, model: str | None = None) -> bool:
        nanos = to_nanos(actual, "actual cost")
        outcome = self._run("commit", reservation_id, nanos, *(() if model is None else (model,)))
        if outcome == "unknown":
            raise UnknownReservation(f"unknown reservation {reservation_id!r} (never made, or forgotten after retention)")
        return outcome == "ok"

    def release(self, reservation_id: str) -> bool:
        return bool(self._run("release", reservation_id))

    def adjust_lambda(self, scope: str, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"lambda must be finite, got {value}")
        if not self._run("lambda", scope, repr(float(value))):
            raise UnknownScope(f"scope {scope!r} has no budget")

    def open_reservations(self) -> int:
        return int(self._run("open"))

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
        scope=scope, budget=Budget.model_validate_json(fields["budget"]),
        period_start=float(fields["period_start"]), committed=int(fields["committed"]),
        reserved=int(fields["reserved"]), requests=int(fields["requests"]), released=int(fields["released"]),
        expired=int(fields["expired"]), lam=float(fields["lam"]) if fields["lam"] else None,
        idle_ttl_s=float(fields["idle_ttl_s"]) if fields.get("idle_ttl_s") else None,
        spend={m: int(v) for m, v in spend.items()}, calls={m: int(v) for m, v in calls.items()},
    ).snapshot()


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL's flat [field, value, ...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2]))
