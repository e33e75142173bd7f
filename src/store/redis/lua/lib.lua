-- Shared by every hold script (prepended to each). All keys of one event share the hash tag
-- {event-id}, passed as the prefix ARGV[1] = "<ns>:{<event>}:"; KEYS[1] is that event's
-- `loaded` marker, which routes the script to the event's slot. ARGV[2] is the caller's `now`
-- in milliseconds: scripts never read Redis's clock.
--
-- Keys of an event, after the prefix:
--   loaded          marker: the event's state was loaded from the database
--   tt:<T>          hash: capacity, sold, held, max (0: no limit), version
--   hold:<H>        hash: id, event, customer, status (ACTIVE, PINNED, RELEASED, EXPIRED,
--                   CONFIRMED), created, expires, ended, items, idem, pinned (when pinned),
--                   rev (raised at every change, so journal entries can be ordered)
--   ttl:<H>         shadow key with the hold's TTL: its expiry fires the keyspace notification
--   expiry          zset: active holds by expires_at (the expiry index)
--   pinned          zset: holds being checked out, by the time they were pinned
--   cust:<C>        hash: ticket type -> tickets of customer C in active holds and orders
--   idem:<n>:<C>:<K> the hold of customer C (n = its length) for idempotency key K
--   log             stream: one entry per state change (the hold and the stock it touched)

local P = ARGV[1]
local NOW = tonumber(ARGV[2])
local RETENTION_MS = 86400000
local LOG_MAX = 10000

local function items_of(text)
  local items = {}
  for t, q in string.gmatch(text or '', '([^:,]+):(%d+)') do
    items[#items + 1] = {t, tonumber(q)}
  end
  return items
end

local function hold_fields(id)
  return redis.call('HGETALL', P .. 'hold:' .. id)
end

-- One stream entry per state change: the hold's fields, and the stock of the ticket types it
-- touched as "type:capacity:sold:held:version,...".
local function emit(id, types)
  local stock = {}
  for i, t in ipairs(types) do
    local c = redis.call('HMGET', P .. 'tt:' .. t, 'capacity', 'sold', 'held', 'version')
    stock[i] = t .. ':' .. (c[1] or 0) .. ':' .. (c[2] or 0) .. ':' .. (c[3] or 0) .. ':' .. (c[4] or 0)
  end
  local entry = hold_fields(id)
  entry[#entry + 1] = 'stock'
  entry[#entry + 1] = table.concat(stock, ',')
  redis.call('XADD', P .. 'log', 'MAXLEN', '~', LOG_MAX, '*', unpack(entry))
end

local function bump(t, field, by)
  redis.call('HINCRBY', P .. 'tt:' .. t, field, by)
  redis.call('HINCRBY', P .. 'tt:' .. t, 'version', 1)
end

-- Ends a hold that is ACTIVE or PINNED: its stock goes back (RELEASED, EXPIRED) or becomes sold
-- (CONFIRMED), exactly once, since only a hold in one of those two states gets here.
local function end_hold(id, status)
  local key = P .. 'hold:' .. id
  local h = redis.call('HMGET', key, 'items', 'customer')
  local types = {}
  for i, item in ipairs(items_of(h[1])) do
    local t, q = item[1], item[2]
    redis.call('HINCRBY', P .. 'tt:' .. t, 'held', -q)
    if status == 'CONFIRMED' then
      redis.call('HINCRBY', P .. 'tt:' .. t, 'sold', q)
    else
      redis.call('HINCRBY', P .. 'cust:' .. h[2], t, -q)
    end
    redis.call('HINCRBY', P .. 'tt:' .. t, 'version', 1)
    types[i] = t
  end
  redis.call('HSET', key, 'status', status, 'ended', ARGV[2])
  redis.call('HINCRBY', key, 'rev', 1)
  redis.call('PEXPIRE', key, RETENTION_MS)
  redis.call('ZREM', P .. 'expiry', id)
  redis.call('ZREM', P .. 'pinned', id)
  redis.call('DEL', P .. 'ttl:' .. id)
  emit(id, types)
end

-- Expires up to `limit` active holds past their expires_at; returns their fields.
local function expire_due(limit)
  local expired = {}
  local due = redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    if redis.call('HGET', P .. 'hold:' .. id, 'status') == 'ACTIVE' then
      end_hold(id, 'EXPIRED')
      expired[#expired + 1] = hold_fields(id)
    else
      redis.call('ZREM', P .. 'expiry', id)
    end
  end
  return expired
end

local function not_loaded()
  return redis.call('EXISTS', KEYS[1]) == 0
end
