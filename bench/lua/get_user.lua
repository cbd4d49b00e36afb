-- GET /v1/users/{id} over random existing ids.  Argument: the file of user ids.
local common = require "common"
allowed = { [200] = true }
local ids

function init(args)
  ids = common.read_lines(args[1])
  common.seed_random()
end

function request()
  return wrk.format("GET", "/v1/users/" .. ids[math.random(#ids)])
end
