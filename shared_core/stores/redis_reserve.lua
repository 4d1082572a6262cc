-- ARGV[5] id, ARGV[6] scopes JSON, ARGV[7] amount, ARGV[8] ttl_s
sweep()
local id, scopes_json, amount = ARGV[5], ARGV[6], tonumber(ARGV[7])
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
local expires = now + tonumber(ARGV[8])
redis.call('HSET', h, 'status', 'open', 'scopes', scopes_json, 'amount', int(amount))
redis.call('ZADD', OPEN, expires, id)
return {'ok'}
