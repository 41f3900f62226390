-- wrk script for bench/soak.sh: a trickle of new users during the soak. Like vend.lua in
-- stream mode (each session JWT once, from FILE.<thread id>), but each connection waits
-- DELAY_MS before each request, so `-c1` gives about 1000/DELAY_MS new users a second.
--   wrk -t1 -c1 ... -s bench/trickle.lua URL -- FILE DELAY_MS
-- done() prints the same RESULT line as vend.lua.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local body = '{"scope":"transcribe"}'
local file, pause

function init(args)
  wrapped = 0
  file = assert(io.open(args[1] .. "." .. id, "r"))
  pause = tonumber(args[2] or "100")
end

function delay()
  return pause
end

function request()
  local jwt = file:read("*l")
  if not jwt then
    wrapped = wrapped + 1
    file:seek("set")
    jwt = file:read("*l")
  end
  return wrk.format("POST", "/v1/tokens",
    { ["Authorization"] = "Bearer " .. jwt, ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local wraps = 0
  for _, t in ipairs(threads) do wraps = wraps + (t:get("wrapped") or 0) end
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f non2xx=%d errors=%d wrapped=%d\n",
    summary.requests, s, summary.requests / s,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, wraps))
end
