-- GET /v1/users/{id} over random existing ids.  Argument: the file of user ids.
-- Every request is formatted once, in init, so that the load generator's own cost per request
-- is a table look-up, as in health.lua: the comparison is between the servers' answers.
local common = require "common"
allowed = { [200] = true }
common.count_errors_only()
local requests

function init(args)
  requests = {}
  for i, id in ipairs(common.read_lines(args[1])) do
    requests[i] = wrk.format("GET", "/v1/users/" .. id)
  end
  common.seed_random()
end

function request()
  return requests[math.random(#requests)]
end
