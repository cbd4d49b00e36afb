-- GET /v1/users?cursor=…&per_page=20 with random cursors from a file (see `seed --cursor-depth`).
local common = require "common"
allowed = { [200] = true }
local cursors

function init(args)
  cursors = common.read_lines(args[1])
  common.seed_random()
end

function request()
  return wrk.format("GET", "/v1/users?per_page=20&cursor=" .. cursors[math.random(#cursors)])
end
