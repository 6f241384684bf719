-- wrk script: POST a small chat completion, print the figures as one JSON line.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_AUTH") then wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_AUTH") end
wrk.body = os.getenv("BENCH_BODY") or
  '{"model": "demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
