-- wrk script for bench/run.sh: the same POST /v1/tokens as vend.lua, but one fixed request
-- (the first JWT of FILE.0) and no per-request Lua, to show what vend.lua's per-request
-- request() costs wrk itself against nginx.
--   wrk ... -s bench/static.lua URL -- FILE
function init(args)
  local f = assert(io.open(args[1] .. ".0", "r"))
  local jwt = f:read("*l")
  f:close()
  wrk.method = "POST"
  wrk.path = "/v1/tokens"
  wrk.headers["Authorization"] = "Bearer " .. jwt
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"scope":"transcribe"}'
end

function done(summary, latency, requests)
  local s = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f non2xx=%d errors=%d wrapped=0\n",
    summary.requests, s, summary.requests / s,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
