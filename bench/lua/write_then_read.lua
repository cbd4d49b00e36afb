-- A write, then a read that presents the write's Consistency-Token, over and over:
-- PATCH /v1/products/{id} (a new stock), then GET /v1/products/{id} with the token the PATCH
-- answered. With replicas, each read waits until a replica has replayed the write (or
-- DB_REPLICA_WAIT_MS passes and the primary answers); scripts/bench.sh (scenario 8) reads that
-- wait from /metrics. Argument: the file of product ids.
local common = require "common"
allowed = { [200] = true }
local ids
local written -- the product the last PATCH wrote, to be read next
local token -- the token that PATCH answered
local writing = false

-- `wrk.format` sends the headers it is given instead of `wrk.headers` (the admin's token).
local function with_defaults(headers)
  for name, value in pairs(wrk.headers) do
    headers[name] = headers[name] or value
  end
  return headers
end

function init(args)
  ids = common.read_lines(args[1])
  common.seed_random()
end

function request()
  if written and token then
    local id = written
    written = nil
    writing = false
    return wrk.format("GET", "/v1/products/" .. id, with_defaults({ ["Consistency-Token"] = token }))
  end
  written = ids[math.random(#ids)]
  writing = true
  return wrk.format("PATCH", "/v1/products/" .. written,
    with_defaults({ ["Content-Type"] = "application/json" }),
    '{"stock": ' .. math.random(1000, 1000000) .. '}')
end

local count = response
function response(status, headers, body)
  count(status, headers, body)
  if writing then
    token = headers["consistency-token"] or headers["Consistency-Token"]
  end
end
