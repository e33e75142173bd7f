-- The stock of some ticket types of the event, after reclaiming its overdue holds.
-- ARGV: prefix, now, then ticket type ids. Returns {'OK', {capacity, sold, held, version}...}
-- with an entry of four nils for a type that is not loaded, or {'NOLOAD'}.
if not_loaded() then return {'NOLOAD'} end
expire_due(1000)
local reply = {'OK'}
for i = 3, #ARGV do
  reply[#reply + 1] = redis.call('HMGET', P .. 'tt:' .. ARGV[i], 'capacity', 'sold', 'held', 'version')
end
return reply
