-- The functions every ledger script starts with. ARGV[1] is the key prefix, ARGV[2] the time
-- ('' = the server's clock), ARGV[3] the retention in seconds, ARGV[4] the most finished
-- reservations remembered; a script's own arguments follow.
local P = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local RETAIN = tonumber(ARGV[3])
local KEEP = tonumber(ARGV[4])
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

-- Forget finished reservations: their records and their places in DONE.
local function forget(ids)
  if #ids == 0 then return end
  local keys = {}
  for i, id in ipairs(ids) do keys[i] = P .. 'hold:' .. id end
  redis.call('DEL', unpack(keys))
  redis.call('ZREM', DONE, unpack(ids))
end

-- A reservation is over, or a released or lapsed one committed late: remember how it ended for
-- RETAIN seconds from now (DONE is ordered by that time, so it moves to the newest end), and
-- forget the oldest beyond KEEP (a thousand at most per script: a lowered KEEP takes a few).
local function finish(id, status)
  redis.call('HSET', P .. 'hold:' .. id, 'status', status)
  redis.call('ZREM', OPEN, id)
  -- Never before the newest end already there: a clock set back must not put this one first in line.
  local score = now + RETAIN
  local newest = redis.call('ZRANGE', DONE, -1, -1, 'WITHSCORES')
  if newest[2] and tonumber(newest[2]) > score then score = tonumber(newest[2]) end
  redis.call('ZADD', DONE, score, id)
  local over = math.min(redis.call('ZCARD', DONE) - KEEP, 1000)
  if over > 0 then
    -- Ends at one time are ordered by id: one more is read, so that this one, if among them, stays.
    local gone = {}
    for _, old in ipairs(redis.call('ZRANGE', DONE, 0, over)) do
      if old ~= id and #gone < over then gone[#gone + 1] = old end
    end
    forget(gone)
  end
end

-- Lapse reservations whose time is up (their money returns; the record stays for late
-- commits) and forget, a thousand at a time, those that ended more than RETAIN seconds ago.
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
  forget(redis.call('ZRANGEBYSCORE', DONE, '-inf', now, 'LIMIT', 0, 1000))
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

-- A scope's books as the ledger reports them: {} without a budget, else {its hash, spend, calls},
-- rolled into the current period.
local function books(s)
  if not scoped(s) then return {} end
  roll(s)
  return {redis.call('HGETALL', skey(s)), redis.call('HGETALL', P .. 'spend:' .. s),
          redis.call('HGETALL', P .. 'calls:' .. s)}
end
