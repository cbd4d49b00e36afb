-- GET /v1/users?page=N&per_page=20 at random pages.  Argument: the number of pages.
local common = require "common"
allowed = { [200] = true }
local pages

function init(args)
  pages = tonumber(args[1])
  common.seed_random()
end

function request()
  return wrk.format("GET", "/v1/users?per_page=20&page=" .. math.random(pages))
end
