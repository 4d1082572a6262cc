-- ARGV[5], ARGV[6], ... pairs of scope, λ → for each, 0 when the scope has no budget, else 1
local set = {}
for i = 5, #ARGV, 2 do
  if scoped(ARGV[i]) then
    redis.call('HSET', skey(ARGV[i]), 'lam', ARGV[i + 1])
    set[#set + 1] = 1
  else
    set[#set + 1] = 0
  end
end
return set
