-- GET /v1/users/{id} for every id in turn, the threads interleaved, to fill the cache.
-- Arguments: the file of user ids, the number of wrk threads, the position to start from.
local common = require "common"
allowed = { [200] = true }
local ids, step, position

function init(args)
  ids = common.read_lines(args[1])
  step = tonumber(args[2])
  position = tonumber(args[3] or "0") + tid - 1
end

function request()
  local id = ids[(position % #ids) + 1]
  position = position + step
  return wrk.format("GET", "/v1/users/" .. id)
end
