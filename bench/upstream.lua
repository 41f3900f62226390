-- wrk script for bench/run.sh: the upstream's token endpoint alone (client-credentials
-- grant), to know the latency the service adds over it at the same concurrency.
--   wrk ... -s bench/upstream.lua URL -- CLIENT_ID CLIENT_SECRET [DELAY_MS]
-- DELAY_MS: each connection waits that long before each request (paced load).
function init(args)
  local pause = tonumber(args[3] or "")
  if pause then
    delay = function() return pause end
  end
  wrk.method = "POST"
  wrk.path = "/realms/base/protocol/openid-connect/token"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.body = "grant_type=client_credentials&client_id=" .. args[1] ..
    "&client_secret=" .. args[2] .. "&scope=openid%20transcribe"
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
