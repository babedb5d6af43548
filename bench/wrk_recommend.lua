-- wrk script for bench.http's closed-loop cross-check.
--
--   wrk -t1 -c C -d 10s --latency -s bench/wrk_recommend.lua http://127.0.0.1:P -- PATHS_FILE [PACE_MS]
--
-- Cycles through the same request paths as the open-loop load generator (one path per line in
-- PATHS_FILE). With PACE_MS > 0 each connection waits that long between an answer and its next
-- request, so C connections give roughly C / (latency + pace) requests per second: a closed-loop
-- client held near a chosen throughput, to compare with the open-loop figure at that throughput.
-- wrk's delay() is in whole milliseconds, so a fractional pace is dithered between floor and ceil.
-- done() prints one machine-readable line (prefix WRK_JSON) with exact percentiles in microseconds.

local requests = {}
local n = 0
local i = 0

function init(args)
  local file = io.open(args[1] or "", "r")
  if file == nil then
    error("wrk_recommend.lua: cannot open the paths file " .. tostring(args[1]))
  end
  for line in file:lines() do
    if #line > 0 then
      n = n + 1
      requests[n] = wrk.format("GET", line)
    end
  end
  file:close()
  if n == 0 then
    error("wrk_recommend.lua: no request paths in " .. tostring(args[1]))
  end
  local pace = tonumber(args[2] or "0") or 0
  if pace > 0 then
    local whole = math.floor(pace)
    local frac = pace - whole
    -- Defined only when pacing: wrk checks for a global delay() after init().
    delay = function()
      if math.random() < frac then return whole + 1 end
      return whole
    end
  end
end

function request()
  i = i % n + 1
  return requests[i]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p75": %d, "p90": %d, "p99": %d, "p99.9": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
