-- Takes the stock of every item or of none, after reclaiming the event's overdue holds.
-- ARGV: prefix, now, hold id, customer, expires_at, idempotency key ('' for none), event id,
-- then ticket type and quantity pairs in ascending ticket type order.
-- KEYS[2] and KEYS[3], given on a single Redis only (in a cluster they live in other slots and
-- the caller writes them itself): the hold's link to its event, which the script writes, and
-- (with an idempotency key) the customer's key across events, which the hold claims.
-- Returns {'OK', fields...} | {'EXISTS', hold id} | {'OTHER_EVENT'} | {'LIMIT', type, max,
-- already} | {'SOLD_OUT', type, available} | {'NOTYPE', type} | {'NOLOAD'}.
if not_loaded() then return {'NOLOAD'} end
local id, customer, expires, idem, event = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local hold_event_key, global_idem_key = KEYS[2], KEYS[3]
expire_due(1000)
local idem_key = P .. 'idem:' .. string.len(customer) .. ':' .. customer .. ':' .. idem
if idem ~= '' then
  local existing = redis.call('GET', idem_key)
  if existing then return {'EXISTS', existing} end
  if global_idem_key then
    local owner = redis.call('GET', global_idem_key)
    if owner and owner ~= event then return {'OTHER_EVENT'} end
  end
end
local items = {}
for i = 8, #ARGV, 2 do
  items[#items + 1] = {ARGV[i], tonumber(ARGV[i + 1])}
end
for _, item in ipairs(items) do
  local t, q = item[1], item[2]
  local c = redis.call('HMGET', P .. 'tt:' .. t, 'capacity', 'sold', 'held', 'max')
  if not c[1] then return {'NOTYPE', t} end
  local max = tonumber(c[4])
  if max > 0 then
    local already = tonumber(redis.call('HGET', P .. 'cust:' .. customer, t) or '0')
    if already + q > max then return {'LIMIT', t, tostring(max), tostring(already)} end
  end
  local available = tonumber(c[1]) - tonumber(c[2]) - tonumber(c[3])
  if available < q then return {'SOLD_OUT', t, tostring(available)} end
end
local parts, types = {}, {}
for i, item in ipairs(items) do
  bump(item[1], 'held', item[2])
  redis.call('HINCRBY', P .. 'cust:' .. customer, item[1], item[2])
  parts[i] = item[1] .. ':' .. item[2]
  types[i] = item[1]
end
redis.call('HSET', P .. 'hold:' .. id, 'id', id, 'event', event, 'customer', customer,
  'status', 'ACTIVE', 'created', ARGV[2], 'expires', expires, 'ended', '',
  'items', table.concat(parts, ','), 'idem', idem, 'rev', 1)
redis.call('SET', P .. 'ttl:' .. id, '1', 'PX', tonumber(expires) - NOW)
redis.call('ZADD', P .. 'expiry', expires, id)
if idem ~= '' then
  redis.call('SET', idem_key, id, 'PX', RETENTION_MS)
  if global_idem_key then redis.call('SET', global_idem_key, event, 'PX', RETENTION_MS) end
end
if hold_event_key then redis.call('SET', hold_event_key, event, 'PX', RETENTION_MS) end
emit(id, types)
local reply = {'OK'}
for _, v in ipairs(hold_fields(id)) do reply[#reply + 1] = v end
return reply
