-- ARGV[4] scope, ARGV[5] λ → 0 when the scope has no budget
if not scoped(ARGV[4]) then return 0 end
redis.call('HSET', skey(ARGV[4]), 'lam', ARGV[5])
return 1
