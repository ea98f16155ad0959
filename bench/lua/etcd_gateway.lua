-- PUT or range random keys key:%08d through etcd's JSON gateway (grpc-gateway),
-- which takes keys and values base64-encoded. Settings from the environment:
--   KVWIRE_OP put|range, KVWIRE_KEYS key count, KVWIRE_VALUE_SIZE bytes per value.
-- Ranges expect the keys preloaded; a range that finds no key counts as an error.
local report = require("wrk_report")

local op = os.getenv("KVWIRE_OP") or "put"
local keys = tonumber(os.getenv("KVWIRE_KEYS") or "10000")
local value_size = tonumber(os.getenv("KVWIRE_VALUE_SIZE") or "100")

setup = report.setup
done = report.done

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- wrk's LuaJIT has no base64; this runs only in init(), never per request.
local function base64(text)
  local out = {}
  for i = 1, #text, 3 do
    local a, b, c = text:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local quad = {}
    for k = 1, 4 do
      local index = math.floor(n / 64 ^ (4 - k)) % 64
      quad[k] = ALPHABET:sub(index + 1, index + 1)
    end
    if not b then quad[3] = "=" end
    if not c then quad[4] = "=" end
    out[#out + 1] = table.concat(quad)
  end
  return table.concat(out)
end

local bodies, path
local headers = {["Content-Type"] = "application/json"}

function init(args)
  math.randomseed(thread_id)
  local value = base64(string.rep("x", value_size))
  bodies = {}
  for i = 0, keys - 1 do
    local key = base64(string.format("key:%08d", i))
    if op == "put" then
      bodies[i] = '{"key":"' .. key .. '","value":"' .. value .. '"}'
    else
      bodies[i] = '{"key":"' .. key .. '"}'
    end
  end
  -- etcd 3.4 serves both /v3/ and /v3beta/; /v3/ is the one kept in 3.5.
  path = op == "put" and "/v3/kv/put" or "/v3/kv/range"
end

function request()
  return wrk.format("POST", path, headers, bodies[math.random(0, keys - 1)])
end

function response(status, headers, body)
  report.check_status(status)
  -- The gateway answers 200 with no "kvs" for a missing key.
  if op == "range" and status == 200 and not body:find('"kvs"', 1, true) then
    report.count_error()
  end
end
