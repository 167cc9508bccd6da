-- reserve_v1: take an amount from every bucket of a tenant, and optionally a concurrency
-- slot, all or nothing, in one atomic call. The math mirrors gateway/limits/limiter.py:
-- a bucket is a hash {u = units (1/60000 token, integer, may be negative), t = ms of last
-- update}; a missing bucket is full; R tokens/minute refill R units per ms.
--
-- KEYS[1..n]   bucket hashes (n = ARGV[2]); KEYS[n+1] (optional) concurrency sorted set
--              (member = slot id, score = lease expiry ms). All keys share one hash tag.
-- ARGV[1]      now in ms, or "" to use the server's TIME (so replicas agree)
-- ARGV[2]      n;  ARGV[3] idle margin ms added to every PEXPIRE
-- ARGV[4..]    capacity, refill_per_minute, amount   for each bucket, in KEYS order
-- then, if KEYS[n+1] is given: limit, slot id, lease_ms
-- Returns {allowed, denied (1-based bucket index, n+1 = concurrency, 0 = none),
--          retry_after_ms, never_fits, slots_in_use, now_ms,
--          remaining_1, reset_ms_1, ..., remaining_n, reset_ms_n}   (integers only)

local U = 60000

-- Exact floor division of integers held in doubles (a plain a / b may round up).
local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function ceil_div(a, b) return -floor_div(-a, b) end
local function wait_ms(units, amount, rate)
  local short = amount * U - units
  if amount == 0 or short <= 0 then return 0 end
  if rate == 0 then return 1000000000000 end  -- limiter.NEVER_MS
  return ceil_div(short, rate)
end
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

local caps, rates, amounts, units, stamps = {}, {}, {}, {}, {}
local never_fits = 0
local denied, longest = 0, 0
for i = 1, n do
  local cap = tonumber(ARGV[1 + 3 * i])
  local rate = tonumber(ARGV[2 + 3 * i])
  local amount = tonumber(ARGV[3 + 3 * i])
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
  caps[i], rates[i], amounts[i], units[i], stamps[i] = cap, rate, amount, u, ts
  if amount > cap and never_fits == 0 then never_fits, denied = 1, i end
end

local in_use, slot_wait = 0, nil
local ckey = KEYS[n + 1]
if ckey then
  redis.call('ZREMRANGEBYSCORE', ckey, '-inf', now)  -- lapsed leases (crashed replicas)
  in_use = redis.call('ZCARD', ckey)
  if in_use >= tonumber(ARGV[4 + 3 * n]) then
    local first = redis.call('ZRANGE', ckey, 0, 0, 'WITHSCORES')
    slot_wait = math.max(1, math.min(1000, tonumber(first[2]) - now))
  end
end
if never_fits == 0 then
  for i = 1, n do
    local w = wait_ms(units[i], amounts[i], rates[i])
    if w > longest then denied, longest = i, w end
  end
  if slot_wait and (denied == 0 or slot_wait > longest) then denied, longest = n + 1, slot_wait end
end

local allowed = 0
if denied == 0 then
  allowed = 1
  for i = 1, n do
    local u = units[i] - amounts[i] * U
    units[i] = u
    redis.call('HSET', KEYS[i], 'u', int(u), 't', int(stamps[i]))
    if rates[i] == 0 then
      redis.call('PEXPIRE', KEYS[i], NO_REFILL_TTL)
    else
      redis.call('PEXPIRE', KEYS[i], wait_ms(u, caps[i], rates[i]) + margin)
    end
  end
  if ckey then
    local lease = tonumber(ARGV[6 + 3 * n])
    redis.call('ZADD', ckey, now + lease, ARGV[5 + 3 * n])
    redis.call('PEXPIRE', ckey, lease + margin)
    in_use = in_use + 1
  end
end

local out = {allowed, denied, longest, never_fits, in_use, now}
for i = 1, n do
  out[#out + 1] = math.max(0, floor_div(units[i], U))
  out[#out + 1] = wait_ms(units[i], caps[i], rates[i])
end
return out
