-- GET /health: the server's own ceiling (no database, no cache). Sent the way get_user.lua sends
-- its requests (formatted once, picked per request), so that the two differ only in the answer.
local common = require "common"
allowed = { [200] = true }
common.count_errors_only()
local requests

function init(args)
  requests = { wrk.format("GET", "/health") }
  common.seed_random()
end

function request()
  return requests[math.random(#requests)]
end
