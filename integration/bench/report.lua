-- wrk script: print one machine-readable line with the percentiles we plot.
done = function(summary, latency, requests)
  local e = summary.errors
  local ps = {}
  for _, q in ipairs({50, 75, 90, 95, 99, 99.9}) do
    ps[#ps + 1] = string.format('"%s": %d', q, latency:percentile(q))
  end
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "non2xx": %d, "latency_us": {%s}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    table.concat(ps, ", ")))
end
