-- ARGV[5..] scopes → for each, {} when it has no budget, else {scope hash, spend, calls}
sweep()
local found = {}
for i = 5, #ARGV do found[#found + 1] = books(ARGV[i]) end
return found
