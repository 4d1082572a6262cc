-- ARGV[4] scope, ARGV[5] usd in nanos, ARGV[6] budget JSON, ARGV[7] period_s or '',
-- ARGV[8] '1' to reset the period's spend, ARGV[9] '1' to set only a scope without a budget,
-- ARGV[10] idle_ttl_s or '' → 0 when ARGV[9] found a budget (nothing changed), else 1.
-- The rule is LedgerStore.set_budget's.
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
