-- ARGV[5] id, ARGV[6] actual, ARGV[7] scopes JSON (those whose books are reported), ARGV[8] the
-- pace JSON ('' = λ is not moved here), ARGV[9] model (absent when None)
-- → {'ok' | 'repeat' | 'unknown', books before, books after} (as the states script's)
sweep()
local id, actual, model = ARGV[5], tonumber(ARGV[6]), ARGV[9]
local report = cjson.decode(ARGV[7])
local pace = ARGV[8] ~= '' and cjson.decode(ARGV[8]) or nil
local function read()
  local found = {}
  for _, s in ipairs(report) do found[#found + 1] = books(s) end
  return found
end

-- θ after a request of cost `c` settled against a scope's books before it (`fields`, its hash):
-- shared_core.pacing.DualPacer.update and _pace, operation for operation in doubles, so that λ is
-- what the pacer would store; nil when the budget has no horizon (λ is left as it is).
local function theta_after(fields, c)
  local budget = cjson.decode(fields.budget)
  local usd = budget.usd
  if usd <= 0 then return nil end
  local committed, requests = tonumber(fields.committed) / 1000000000, tonumber(fields.requests)
  local horizon
  if budget.horizon ~= cjson.null and budget.horizon ~= nil then
    horizon = budget.horizon
  elseif budget.horizon_s ~= cjson.null and budget.horizon_s ~= nil then
    local elapsed = math.max(1.0, now - tonumber(fields.period_start))
    horizon = math.max(1.0, (requests + 1) * budget.horizon_s / elapsed)
  else
    return nil
  end
  local left = math.max(0.0, usd - committed)
  local share, target = usd / horizon, left / math.max(1.0, horizon - requests)
  local gradient = (c - target) / share
  local theta = tonumber(fields.lam)
  if not theta then theta = pace.warm and 1.0 or pace.initial end
  if pace.warm then
    theta = theta * math.exp(math.max(-1.0, math.min(1.0, pace.warm_step * gradient)))
  else
    theta = theta + pace.step * gradient
  end
  if theta ~= theta or theta == math.huge or theta == -math.huge then return pace.max_theta end
  return math.min(pace.max_theta, math.max(0.0, theta))
end

local before = read()
local h = P .. 'hold:' .. id
local f = redis.call('HMGET', h, 'status', 'scopes', 'amount')
if not f[1] then return {'unknown', before, before} end
if f[1] == 'committed' then return {'repeat', before, before} end
if pace then
  -- λ of each charged scope, from its books before the commit; one left where it was is not written.
  local charged = {}
  for _, s in ipairs(pace.scopes) do charged[s] = true end
  for i, s in ipairs(report) do
    if charged[s] and before[i][1] then
      local fields = {}
      for j = 1, #before[i][1], 2 do fields[before[i][1][j]] = before[i][1][j + 1] end
      local theta = theta_after(fields, pace.cost)
      if theta and theta ~= tonumber(fields.lam) then
        redis.call('HSET', skey(s), 'lam', string.format('%.17g', theta))
      end
    end
  end
end
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
