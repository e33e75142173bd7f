-- Expires up to ARGV[3] overdue holds of the event and reports holds pinned before ARGV[4]
-- (checkouts that may have died midway).
-- Returns {'OK', {stale pinned ids}, {fields of each expired hold}...}.
if not_loaded() then return {'NOLOAD'} end
local expired = expire_due(tonumber(ARGV[3]))
local stale = redis.call('ZRANGEBYSCORE', P .. 'pinned', '-inf', ARGV[4])
local reply = {'OK', stale}
for _, fields in ipairs(expired) do reply[#reply + 1] = fields end
return reply
