-- wrk script for bench/run.sh: POST /v1/tokens {"scope":"transcribe"} with a session JWT
-- per request, read from pre-generated files (one per wrk thread: FILE.0, FILE.1, ...).
--   wrk ... -s bench/vend.lua URL -- FILE cycle    all lines in memory, round-robin (reuse)
--   wrk ... -s bench/vend.lua URL -- FILE stream   each line once, in order (mint, scale);
--                                                 wraps around (and says so) when exhausted
--   wrk ... -s bench/vend.lua URL -- FILE stream DELAY_MS   as stream, each connection
--                                                 waiting DELAY_MS before each request
--                                                 (soak.sh's trickle of new users)
-- done() prints one machine-readable RESULT line that run.sh parses.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local body = '{"scope":"transcribe"}'
local tokens, n, i, file, pause

function init(args)
  local path = args[1] .. "." .. id
  wrapped = 0
  pause = tonumber(args[3] or "")
  if pause then
    delay = function() return pause end
  end
  if (args[2] or "cycle") == "cycle" then
    tokens = {}
    for line in io.lines(path) do tokens[#tokens + 1] = line end
    n = #tokens
    i = 0
  else
    file = assert(io.open(path, "r"))
  end
end

function request()
  local jwt
  if tokens then
    i = i % n + 1
    jwt = tokens[i]
  else
    jwt = file:read("*l")
    if not jwt then
      wrapped = wrapped + 1
      file:seek("set")
      jwt = file:read("*l")
    end
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
