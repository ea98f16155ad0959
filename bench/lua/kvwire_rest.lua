-- GET or PUT random keys key:%08d against the kvwire HTTP bridge (http_bridge/app.py).
-- Settings come from the environment, set by bench/wrk.py:
--   KVWIRE_OP get|put, KVWIRE_KEYS key count, KVWIRE_VALUE_SIZE characters per value.
-- GETs expect the keys preloaded (bench.wrk.preload_rest); a 404 counts as an error.
local report = require("wrk_report")

local op = os.getenv("KVWIRE_OP") or "get"
local keys = tonumber(os.getenv("KVWIRE_KEYS") or "10000")
local value_size = tonumber(os.getenv("KVWIRE_VALUE_SIZE") or "100")

setup = report.setup
done = report.done

local paths, method, body, headers

function init(args)
  math.randomseed(thread_id)
  -- Built once per thread, so request() only picks a number and formats.
  paths = {}
  for i = 0, keys - 1 do
    paths[i] = string.format("/kv-store/v1/kv/key:%08d/", i)
  end
  if op == "put" then
    method = "PUT"
    -- The bridge takes {"value": <JSON>}; a string of value_size characters.
    body = '{"value":"' .. string.rep("x", value_size) .. '"}'
    headers = {["Content-Type"] = "application/json"}
  else
    method = "GET"
    headers = {}
  end
end

function request()
  return wrk.format(method, paths[math.random(0, keys - 1)], headers, body)
end

function response(status, headers, body)
  report.check_status(status)
end
