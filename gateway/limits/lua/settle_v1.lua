-- settle_v1: refund (negative delta) or charge (positive delta) a tenant's buckets after a
-- request, and release its concurrency slot, in one atomic call. Same bucket layout and math
-- as reserve_v1. A charge may leave a bucket below zero (debt that refill repays); a refund
-- never lifts it above capacity.
--
-- KEYS[1..n]   bucket hashes (n = ARGV[2]); KEYS[n+1] (optional) concurrency sorted set
-- ARGV[1]      now in ms, or "" for the server's TIME
-- ARGV[2]      n;  ARGV[3] idle margin ms added to every PEXPIRE
-- ARGV[4..]    capacity, refill_per_minute, delta   for each bucket, in KEYS order
-- then, if KEYS[n+1] is given: the slot id to release
-- Returns the number of slots released (0 or 1).

local U = 60000

local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function ceil_div(a, b) return -floor_div(-a, b) end
local function int(x) return string.format('%.0f', x) end
local NO_REFILL_TTL = 3456000000     -- 40 days: a rate-0 (budget) bucket outlives its period

if redis.replicate_commands then redis.replicate_commands() end  -- TIME before writes (Redis < 5)

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local n = tonumber(ARGV[2])
local margin = tonumber(ARGV[3])

for i = 1, n do
  local cap = tonumber(ARGV[1 + 3 * i])
  local rate = tonumber(ARGV[2 + 3 * i])
  local delta = tonumber(ARGV[3 + 3 * i])
  local full = cap * U
  local u, ts = full, now
  local raw = redis.call('HMGET', KEYS[i], 'u', 't')
  if raw[1] then
    u, ts = tonumber(raw[1]), tonumber(raw[2])
    if now > ts then
      if u < full and rate > 0 then
        local dt = math.min(now - ts, ceil_div(full - u, rate))
        u = math.min(full, u + dt * rate)
      end
      ts = now
    end
  end
  u = math.min(full, u - delta * U)
  redis.call('HSET', KEYS[i], 'u', int(u), 't', int(ts))
  if rate == 0 then
    redis.call('PEXPIRE', KEYS[i], NO_REFILL_TTL)
  else
    local refill_ms = 0
    if u < full then refill_ms = ceil_div(full - u, rate) end
    redis.call('PEXPIRE', KEYS[i], refill_ms + margin)
  end
end

if KEYS[n + 1] then
  return redis.call('ZREM', KEYS[n + 1], ARGV[4 + 3 * n])
end
return 0
