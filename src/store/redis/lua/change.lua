-- Extends, releases, expires, pins, unpins or finalizes one hold, by ARGV[4] (the action).
-- ARGV: prefix, now, hold id, action, then for 'extend' the new expires_at, for 'unpin' the
-- stamp of the pin to undo (another checkout's later pin is left alone).
-- Returns {'OK', fields...} when the hold changed, {'NOLOAD'}, {'NOT_FOUND'}, or
-- {'STATUS', status, fields...} when the action does not apply to the hold as it is.
if not_loaded() then return {'NOLOAD'} end
local id, action = ARGV[3], ARGV[4]
local key = P .. 'hold:' .. id
local status = redis.call('HGET', key, 'status')
if not status then return {'NOT_FOUND'} end
local expires = tonumber(redis.call('HGET', key, 'expires'))

local function answer(tag)
  local reply = {tag}
  if tag == 'STATUS' then reply[2] = status end
  for _, v in ipairs(hold_fields(id)) do reply[#reply + 1] = v end
  return reply
end

-- An active hold past its expiry is expired first, whatever the action: it never comes back.
if status == 'ACTIVE' and expires <= NOW then
  end_hold(id, 'EXPIRED')
  status = 'EXPIRED'
  if action == 'expire' then return answer('OK') end
  return answer('STATUS')
end

if action == 'expire' then
  return answer('STATUS')
elseif action == 'extend' then
  if status ~= 'ACTIVE' then return answer('STATUS') end
  local until_ms = tonumber(ARGV[5])
  redis.call('HSET', key, 'expires', ARGV[5])
  redis.call('HINCRBY', key, 'rev', 1)
  redis.call('SET', P .. 'ttl:' .. id, '1', 'PX', until_ms - NOW)
  redis.call('ZADD', P .. 'expiry', until_ms, id)
  emit(id, {})
  return answer('OK')
elseif action == 'release' then
  if status ~= 'ACTIVE' then return answer('STATUS') end
  end_hold(id, 'RELEASED')
  return answer('OK')
elseif action == 'pin' then
  -- Checkout starts: the hold can no longer expire until it is finalized or unpinned.
  if status ~= 'ACTIVE' then return answer('STATUS') end
  redis.call('HSET', key, 'status', 'PINNED', 'pinned', ARGV[2])
  redis.call('ZREM', P .. 'expiry', id)
  redis.call('DEL', P .. 'ttl:' .. id)
  redis.call('ZADD', P .. 'pinned', NOW, id)
  return answer('OK')
elseif action == 'finalize' then
  -- The order is committed in the database. ACTIVE is accepted too: a hold rebuilt from the
  -- journal after Redis lost its data comes back ACTIVE.
  if status ~= 'PINNED' and status ~= 'ACTIVE' then return answer('STATUS') end
  end_hold(id, 'CONFIRMED')
  return answer('OK')
elseif action == 'unpin' then
  if status ~= 'PINNED' then return answer('STATUS') end
  if ARGV[5] and redis.call('HGET', key, 'pinned') ~= ARGV[5] then return answer('STATUS') end
  redis.call('ZREM', P .. 'pinned', id)
  redis.call('HSET', key, 'status', 'ACTIVE')
  if expires <= NOW then
    end_hold(id, 'EXPIRED')
  else
    redis.call('SET', P .. 'ttl:' .. id, '1', 'PX', expires - NOW)
    redis.call('ZADD', P .. 'expiry', expires, id)
  end
  return answer('OK')
end
return redis.error_reply('unknown action ' .. action)
