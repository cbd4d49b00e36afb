-- GET /health: the server's own ceiling (no database, no cache).
local common = require "common"
allowed = { [200] = true }

function init(args)
  common.seed_random()
end

request = function()
  return wrk.format("GET", "/health")
end
