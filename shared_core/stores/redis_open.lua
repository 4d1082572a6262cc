-- → how many reservations are open
sweep()
return redis.call('ZCARD', OPEN)
