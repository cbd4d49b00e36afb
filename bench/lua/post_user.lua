-- POST /v1/users with a fresh email every time (Argon2id-bound).  Argument: a token unique to
-- the run, so that repeated runs against one database never collide on an email.
local common = require "common"
allowed = { [201] = true }
local token
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  -- The time as well: the warm-up run and the measured run get the same argument.
  token = (args[1] or "run") .. "-" .. tostring(os.time())
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"name":"Load %d-%d","email":"load-%s-%d-%d@bench.example","password":"benchmark-password"}',
    tid, counter, token, tid, counter)
  return wrk.format("POST", "/v1/users", headers, body)
end
