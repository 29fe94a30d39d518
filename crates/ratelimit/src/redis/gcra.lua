-- GCRA for every limit of one request, atomically (Redis runs a script alone).
-- KEYS[i]: the TAT of limit i, in microseconds of the server's clock.
-- ARGV[2i-1], ARGV[2i]: limit i's emission interval and tolerance, in microseconds.
-- Returns four integers per limit: admitted (0/1), remaining, reset and retry-after (µs).
-- Nothing is written unless every limit admits the request.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, nexts, all = {}, {}, true
for i = 1, #KEYS do
  local e = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local stored = redis.call('GET', KEYS[i])
  local tat = stored and tonumber(stored) or 0
  local base = math.max(tat, now)
  local ahead = base + e - now
  if ahead > tau then
    all = false
    out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = 0, 0, base - now, ahead - tau
  else
    nexts[i] = base + e
    out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = 1, math.floor((tau - ahead) / e), ahead, 0
  end
end
if all then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.0f', nexts[i]), 'PX', math.ceil((nexts[i] - now) / 1000) + 1)
  end
end
return out
