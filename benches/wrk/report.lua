-- wrk script for the benchmarks: an optional form POST, and one machine-readable summary line.
--
--   WRK_METHOD=POST WRK_BODY='client_id=tv-app' wrk -s benches/wrk/report.lua ... URL
--
-- At the end wrk prints `WRK_JSON {...}`: requests, duration, bytes, errors by kind (status =
-- answers that were not 2xx/3xx) and latency percentiles in microseconds (wrk records each
-- request's time from write to the end of its response, per connection, closed loop).
local method = os.getenv("WRK_METHOD")
local body = os.getenv("WRK_BODY")
if method and method ~= "" then wrk.method = method end
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency":{"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
