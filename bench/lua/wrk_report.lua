-- Shared by the wrk scripts here: counts non-2xx replies and prints one JSON
-- line from done(), so bench/wrk.py reads numbers rather than wrk's prose.
-- Found through LUA_PATH, which bench/wrk.py sets to this directory.
local M = {}

M.MARKER = "KVWIRE_WRK_RESULT "
local threads = {}

-- Runs in the main Lua state once per thread, before init() in the thread's own state.
function M.setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

-- wrk counts status > 399 in errors.status itself; 1xx and 3xx are failures for
-- a key-value API too, so each thread counts them (and script-specific misses) here.
kvwire_extra_errors = 0

function M.check_status(status)
  if status < 200 or (status >= 300 and status < 400) then
    kvwire_extra_errors = kvwire_extra_errors + 1
  end
end

function M.count_error()
  kvwire_extra_errors = kvwire_extra_errors + 1
end

function M.done(summary, latency, requests)
  local extra = 0
  for _, thread in ipairs(threads) do
    extra = extra + (thread:get("kvwire_extra_errors") or 0)
  end
  local e = summary.errors
  -- Latencies are microseconds; percentile() takes 0-100.
  io.write(string.format(
    '%s{"requests":%d,"errors":%d,"socket_errors":%d,"status_errors":%d,"extra_errors":%d,'
      .. '"duration_us":%d,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    M.MARKER, summary.requests, e.connect + e.read + e.write + e.status + e.timeout + extra,
    e.connect + e.read + e.write + e.timeout, e.status, extra, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end

return M
