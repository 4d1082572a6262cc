-- ARGV[5] id → 1 when an open reservation was released
sweep()
local id = ARGV[5]
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
