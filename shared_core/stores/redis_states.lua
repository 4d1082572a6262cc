-- ARGV[5..] scopes → for each, {} when it has no budget, else {scope hash, spend, calls}
sweep()
local found = {}
for i = 5, #ARGV do
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
