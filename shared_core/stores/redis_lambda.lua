-- ARGV[5] scope, ARGV[6] λ → 0 when the scope has no budget
if not scoped(ARGV[5]) then return 0 end
redis.call('HSET', skey(ARGV[5]), 'lam', ARGV[6])
return 1
