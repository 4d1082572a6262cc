-- → every scope that has a budget, unsorted
sweep()
return redis.call('SMEMBERS', P .. 'scopes')
