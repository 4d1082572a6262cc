-- ARGV[5] scope, ARGV[6] usd in nanos, ARGV[7] budget JSON, ARGV[8] period_s or '',
-- ARGV[9] '1' to reset the period's spend, ARGV[10] '1' to set only a scope without a budget,
-- ARGV[11] idle_ttl_s or '' → 0 when ARGV[10] found a budget (nothing changed), else 1.
-- The rule is LedgerStore.set_budget's.
sweep()
local s = ARGV[5]
local k = skey(s)
if not scoped(s) then
  redis.call('DEL', k, P .. 'spend:' .. s, P .. 'calls:' .. s)
  redis.call('HSET', k, 'period_start', now, 'committed', 0, 'reserved', 0, 'requests', 0,
             'released', 0, 'expired', 0, 'lam', '')
  redis.call('SADD', P .. 'scopes', s)
elseif ARGV[10] == '1' then
  return 0
else
  roll(s)
  if ARGV[9] == '1' then
    redis.call('HSET', k, 'period_start', now, 'committed', 0, 'requests', 0, 'released', 0, 'expired', 0)
    redis.call('DEL', P .. 'spend:' .. s, P .. 'calls:' .. s)
  elseif tonumber(redis.call('HGET', k, 'period_s')) ~= tonumber(ARGV[8]) then
    -- a changed period (none, some or another length) starts now and keeps the spend it has
    redis.call('HSET', k, 'period_start', now)
  end
end
redis.call('HSET', k, 'usd', ARGV[6], 'budget', ARGV[7], 'period_s', ARGV[8], 'idle_ttl_s', ARGV[11])
if ARGV[11] == '' then redis.call('ZREM', IDLE, s) else touch(s) end
return 1
