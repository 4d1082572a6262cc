-- → the oldest end DONE still remembers, else RETAIN seconds ago (LedgerStore.remembered_since), as
-- text: Redis would cut a number to an integer
sweep()
local oldest = redis.call('ZRANGE', DONE, 0, 0, 'WITHSCORES')
local forget_at = now
if oldest[2] then forget_at = tonumber(oldest[2]) end
return string.format('%.17g', forget_at - RETAIN)
