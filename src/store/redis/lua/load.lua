-- Loads an event from the database, once: does nothing if it is loaded already (another
-- instance won the race). Also adds a single new ticket type to a loaded event.
-- ARGV: prefix, now, mode ('event' or 'type'), n types, then per type: id, capacity, sold,
-- max, version; n holds, then per hold: id, customer, created, expires, items, idem, rev;
-- n lapsed holds (journaled active, past their expiry: they lapsed while Redis was away), then
-- per hold: id, customer, created, expires, items, idem, rev; n customer counts, then per count:
-- customer, type, quantity.
-- Returns 1 if it loaded, 0 if there was nothing to do.
local mode = ARGV[3]
if mode == 'event' and not not_loaded() then return 0 end
if mode == 'type' and not_loaded() then return 0 end
local i = 4
local types = tonumber(ARGV[i]); i = i + 1
for _ = 1, types do
  local key = P .. 'tt:' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'capacity', ARGV[i + 1], 'sold', ARGV[i + 2], 'held', 0,
      'max', ARGV[i + 3], 'version', ARGV[i + 4])
  end
  i = i + 5
end
if mode == 'type' then return 1 end
local event = string.match(P, '{(.*)}')
local holds = tonumber(ARGV[i]); i = i + 1
for _ = 1, holds do
  local id, customer, created, expires, items, idem =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  redis.call('HSET', P .. 'hold:' .. id, 'id', id, 'event', event, 'customer', customer,
    'status', 'ACTIVE', 'created', created, 'expires', expires, 'ended', '', 'items', items,
    'idem', idem, 'rev', ARGV[i + 6])
  i = i + 7
  redis.call('SET', P .. 'ttl:' .. id, '1', 'PX', math.max(1, tonumber(expires) - NOW))
  redis.call('ZADD', P .. 'expiry', expires, id)
  for _, item in ipairs(items_of(items)) do
    redis.call('HINCRBY', P .. 'tt:' .. item[1], 'held', item[2])
    redis.call('HINCRBY', P .. 'cust:' .. customer, item[1], item[2])
  end
  if idem ~= '' then
    local idem_key = P .. 'idem:' .. string.len(customer) .. ':' .. customer .. ':' .. idem
    redis.call('SET', idem_key, id, 'PX', RETENTION_MS)
  end
end
local lapsed = tonumber(ARGV[i]); i = i + 1
for _ = 1, lapsed do
  local id = ARGV[i]
  redis.call('HSET', P .. 'hold:' .. id, 'id', id, 'event', event, 'customer', ARGV[i + 1],
    'status', 'EXPIRED', 'created', ARGV[i + 2], 'expires', ARGV[i + 3], 'ended', ARGV[2],
    'items', ARGV[i + 4], 'idem', ARGV[i + 5], 'rev', ARGV[i + 6] + 1)
  redis.call('PEXPIRE', P .. 'hold:' .. id, RETENTION_MS)
  emit(id, {})
  i = i + 7
end
local counts = tonumber(ARGV[i]); i = i + 1
for _ = 1, counts do
  redis.call('HINCRBY', P .. 'cust:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('XADD', P .. 'log', 'MAXLEN', '~', LOG_MAX, '*', 'loaded', ARGV[2])
return 1
