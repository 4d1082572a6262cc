-- ARGV[5] id, ARGV[6] actual, ARGV[7] scopes JSON (those whose books are reported), ARGV[8] model
-- (absent when None) → {'ok' | 'repeat' | 'unknown', books before, books after} (as the states script's)
sweep()
local id, actual, model = ARGV[5], tonumber(ARGV[6]), ARGV[8]
local report = cjson.decode(ARGV[7])
local function read()
  local found = {}
  for _, s in ipairs(report) do found[#found + 1] = books(s) end
  return found
end
local before = read()
local h = P .. 'hold:' .. id
local f = redis.call('HMGET', h, 'status', 'scopes', 'amount')
if not f[1] then return {'unknown', before, before} end
if f[1] == 'committed' then return {'repeat', before, before} end
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
return {'ok', before, read()}
